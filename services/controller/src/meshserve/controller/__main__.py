"""`python -m meshserve.controller`: the controller, kubernetes or local mode (settings from MESHSERVE_CONTROLLER_*)."""

from __future__ import annotations

import asyncio
import sys

from meshserve.common import logging as mlog
from meshserve.controller.settings import ControllerSettings


def main() -> int:
    settings = ControllerSettings()
    mlog.configure(service="controller", level=settings.log_level, json=settings.log_json)
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: ControllerSettings) -> None:
    from meshserve.controller.app import ControllerApp

    # built inside the running loop: grpc.aio channels bind to the loop that creates them
    await ControllerApp(settings).run()


if __name__ == "__main__":
    sys.exit(main())
