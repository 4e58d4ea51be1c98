"""`python -m meshserve.controller`: the controller, kubernetes or local mode (settings from MESHSERVE_CONTROLLER_*).

Loads the settings once, configures logging and runs `ControllerApp.serve` under the common
`run_main` (signals, graceful stop, exit code 1 when the reconciler failed). May import
`meshserve.common` and the controller's settings and app.
"""

from __future__ import annotations

import sys

from meshserve.common import logging as mlog
from meshserve.common.lifecycle import Lifecycle, run_main
from meshserve.controller.settings import ControllerSettings


def main() -> int:
    settings = ControllerSettings()
    mlog.configure(service="controller", level=settings.log_level, json=settings.log_json)

    async def serve(life: Lifecycle) -> None:
        from meshserve.controller.app import ControllerApp

        # built inside the running loop: grpc.aio channels bind to the loop that creates them
        await ControllerApp(settings).serve(life)

    return run_main("controller", serve)


if __name__ == "__main__":
    sys.exit(main())
