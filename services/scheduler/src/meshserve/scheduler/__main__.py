"""`python -m meshserve.scheduler [serve|migrate]`

Loads the settings once, configures logging, and either migrates the database or runs
`SchedulerApp.serve` under the common `run_main` (signals, graceful stop, exit code 1 when a
background task failed). May import `meshserve.common` and the scheduler's settings, app and
migrations.
"""

from __future__ import annotations

import sys

from meshserve.common import logging as mlog
from meshserve.common.lifecycle import Lifecycle, run_main
from meshserve.scheduler.settings import STOP_GRACE_SECONDS, SchedulerSettings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    settings = SchedulerSettings()
    mlog.configure(service="scheduler", level=settings.log_level, json=settings.log_json)
    command = args[0] if args else "serve"
    if command == "migrate":
        from meshserve.scheduler.store.migrate import upgrade

        upgrade(settings.database_url)
        return 0
    if command != "serve":
        print("usage: python -m meshserve.scheduler [serve|migrate]", file=sys.stderr)
        return 2

    async def serve(life: Lifecycle) -> None:
        from meshserve.scheduler.app import SchedulerApp

        # built inside the running loop: grpc.aio channels bind to the loop that creates them
        await SchedulerApp(settings).serve(life)

    return run_main("scheduler", serve, grace=STOP_GRACE_SECONDS, use_uvloop=True)


if __name__ == "__main__":
    sys.exit(main())
