"""`python -m meshserve.controller` as a real process against the fake API server: readiness,
metrics, and a clean exit 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from .conftest import FakeKube, SchedulerFixture, eventually, free_port

pytestmark = pytest.mark.timeout(120)


async def test_process_becomes_ready_serves_metrics_and_exits_0_on_sigterm(
    fakekube: FakeKube, scheduler: SchedulerFixture, tmp_path: object
) -> None:
    health, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "MESHSERVE_CONTROLLER_KUBECONFIG": str(fakekube.kubeconfig),
        "MESHSERVE_CONTROLLER_NAMESPACE": "modelmesh-serving",
        "MESHSERVE_CONTROLLER_SCHEDULER_ADDRESS": scheduler.address,
        "MESHSERVE_CONTROLLER_HEALTH_PORT": str(health),
        "MESHSERVE_CONTROLLER_METRICS_PORT": str(metrics_port),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshserve.controller", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async def ready() -> bool:
            async with fakekube.http.get(f"http://127.0.0.1:{health}/readyz") as r:
                return r.status == 200
        await eventually(ready, within=60, what="controller /readyz")

        async def relisted() -> bool:
            async with fakekube.http.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                return "meshserve_controller_relists_total" in await r.text()
        await eventually(relisted, what="controller metrics")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.returncode != 0 and proc.stdout is not None:
            print((await proc.stdout.read()).decode()[-4000:])
