"""`python -m meshserve.puller`: the sidecar beside a model server.

Loads the settings once, configures logging and runs `PullerApp.serve` under the common
`run_main` (signals, graceful stop, exit code 1 when a background task failed). May import
`meshserve.common` and the puller's settings and app.
"""

from __future__ import annotations

import os

# The puller forks children (the Keras converter) while grpc.aio's threads run; gRPC's fork
# handlers then crash the child now and then (SIGSEGV in an event-engine thread). The child
# only execs, so it needs none of them. Read by gRPC's core when it loads: set before any
# import that might load it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import sys

from meshserve.common import logging as mlog
from meshserve.common.lifecycle import Lifecycle, run_main
from meshserve.puller.settings import PullerSettings


def main() -> int:
    settings = PullerSettings()
    mlog.configure(service=f"puller[{settings.pod_id}]", level=settings.log_level, json=settings.log_json)

    async def serve(life: Lifecycle) -> None:
        from meshserve.puller.app import PullerApp

        # built inside the running loop: grpc.aio channels bind to the loop that creates them
        await PullerApp(settings).serve(life)

    return run_main("puller", serve, use_uvloop=True)


if __name__ == "__main__":
    sys.exit(main())
