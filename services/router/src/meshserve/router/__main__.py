"""`python -m meshserve.router`: the KServe v2 front door.

Loads the settings once, configures logging and runs `RouterApp.serve` under the common
`run_main` (signals, graceful stop, exit code 1 when a background task failed). May import
`meshserve.common` and the router's settings and app.
"""

from __future__ import annotations

import sys

from meshserve.common import logging as mlog
from meshserve.common.lifecycle import Lifecycle, run_main
from meshserve.router.settings import RouterSettings


def main() -> int:
    settings = RouterSettings()
    mlog.configure(service="router", level=settings.log_level, json=settings.log_json)

    async def serve(life: Lifecycle) -> None:
        from meshserve.router.app import RouterApp

        # built inside the running loop: grpc.aio channels bind to the loop that creates them
        await RouterApp(settings).serve(life)

    return run_main("router", serve, use_uvloop=True)


if __name__ == "__main__":
    sys.exit(main())
