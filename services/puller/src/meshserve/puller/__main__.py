"""`python -m meshserve.puller`: the sidecar beside a model server."""

from __future__ import annotations

import asyncio
import sys

import uvloop

from meshserve.common import logging as mlog
from meshserve.puller.settings import PullerSettings


def main() -> int:
    settings = PullerSettings()
    mlog.configure(service=f"puller[{settings.pod_id}]", level=settings.log_level, json=settings.log_json)

    uvloop.install()
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: object) -> None:
    from meshserve.puller.app import PullerApp

    # built inside the running loop: grpc.aio channels bind to the loop that creates them
    await PullerApp(settings).run()  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
