"""`python -m meshserve.router`: the KServe v2 front door."""

from __future__ import annotations

import asyncio
import sys

import uvloop

from meshserve.common import logging as mlog
from meshserve.router.settings import RouterSettings


def main() -> int:
    settings = RouterSettings()
    mlog.configure(service="router", level=settings.log_level, json=settings.log_json)
    uvloop.install()
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: RouterSettings) -> None:
    from meshserve.router.app import RouterApp

    # built inside the running loop: grpc.aio channels bind to the loop that creates them
    await RouterApp(settings).run()


if __name__ == "__main__":
    sys.exit(main())
