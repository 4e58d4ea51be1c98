"""The scheduler's composition root on the common skeleton, over real Redis and Postgres:
`/healthz` + `/readyz` from `common.health` on the admin port (ready while Redis and Postgres
answer; a Redis that is down is named with its message), the named background tasks, the
gRPC server, and a stop that closes the servers and the stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import httpx
import pytest

from meshserve.cli.procs import free_port
from meshserve.common.lifecycle import Lifecycle
from meshserve.common.proto.meshserve.v1 import scheduler_pb2, scheduler_pb2_grpc
from meshserve.scheduler.app import SchedulerApp
from meshserve.scheduler.settings import STOP_GRACE_SECONDS, SchedulerSettings
from meshserve.scheduler.store.live import LiveState
from meshserve.scheduler.store.migrate import upgrade


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 20.0, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def settings_for(redis_url: str, database_url: str, prefix: str, admin_port: int) -> SchedulerSettings:
    return SchedulerSettings(
        redis_url=redis_url, database_url=database_url, key_prefix=prefix,
        grpc_address="127.0.0.1:0", admin_host="127.0.0.1", admin_port=admin_port, metrics_port=0,
    )


async def _answers(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def test_probes_tasks_grpc_and_a_clean_stop(redis_url: str, database_url: str, prefix: str, live: LiveState) -> None:
    # `live`: the test's key prefix, its keys (the registry mirror's) removed afterwards
    upgrade(database_url)
    admin_port = free_port()
    app = SchedulerApp(settings_for(redis_url, database_url, prefix, admin_port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}") as http:
        async with Lifecycle("scheduler", grace=STOP_GRACE_SECONDS) as life:
            serving = asyncio.create_task(app.serve(life))
            await eventually(lambda: _answers(http), what="/healthz")
            r = await http.get("/healthz")
            assert (r.status_code, r.json()) == (200, {"status": "ok"})
            r = await http.get("/readyz")
            assert (r.status_code, r.json()) == (200, {"status": "ready"})
            assert {"admin-api", "registry-mirror", "leader"} <= set(life.tasks)
            assert not any(t.done() for t in life.tasks.values())
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
                stub = scheduler_pb2_grpc.SchedulerStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as err:  # mapped by the interceptor
                    await stub.EnsureLoaded(scheduler_pb2.EnsureLoadedRequest(model_id="not-registered"), timeout=10)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
            life.stop()
            await asyncio.wait_for(serving, 10)
        assert life.failure is None
        assert all(t.done() for t in life.tasks.values())
        with pytest.raises(httpx.TransportError):  # the admin server is closed
            await http.get("/healthz")


async def test_readyz_names_a_redis_that_is_down(database_url: str, prefix: str) -> None:
    upgrade(database_url)
    admin_port = free_port()
    app = SchedulerApp(settings_for(f"redis://127.0.0.1:{free_port()}/0", database_url, prefix, admin_port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}") as http:
        async with Lifecycle("scheduler", grace=STOP_GRACE_SECONDS) as life:
            serving = asyncio.create_task(app.serve(life))
            await eventually(lambda: _answers(http), what="/healthz")
            r = await http.get("/readyz")
            assert r.status_code == 503
            assert r.json()["status"] == "not ready"
            [problem] = r.json()["problems"]  # Postgres answers: only Redis is named
            assert problem.startswith("redis: live state (Redis) is unavailable"), problem
            life.stop()
            await asyncio.wait_for(serving, 10)
