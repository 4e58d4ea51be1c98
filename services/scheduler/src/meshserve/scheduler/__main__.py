"""`python -m meshserve.scheduler [serve|migrate]`"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from meshserve.common import logging as mlog
from meshserve.scheduler.settings import SchedulerSettings


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

    uvloop.install()
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: object) -> None:
    from meshserve.scheduler.app import SchedulerApp

    # built inside the running loop: grpc.aio channels bind to the loop that creates them
    await SchedulerApp(settings).run()  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
