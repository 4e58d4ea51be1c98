"""GET /v1/runtimes/{name}/pressure over real Redis + Postgres: capacity evictions of the window
with their sizes (drains not counted, other runtimes not counted), the LRU copy age, the
read token, and bad windows refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from pydantic import SecretStr

from meshserve.scheduler.api import create_app
from meshserve.scheduler.service import SchedulerService
from meshserve.scheduler.store.migrate import upgrade

READ = "read-token-for-tests"
MIB = 1 << 20


@pytest.fixture
async def admin(
    make_service: Callable[..., AbstractAsyncContextManager[SchedulerService]], database_url: str
) -> AsyncIterator[tuple[SchedulerService, httpx.AsyncClient]]:
    upgrade(database_url)
    async with make_service(database_url, admin_token=SecretStr("admin"), admin_read_token=SecretStr(READ)) as service:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin",
                                     headers={"Authorization": f"Bearer {READ}"}) as c:
            yield service, c


async def _pod(service: SchedulerService, pod: str, runtime: str, *, capacity: int = 100 * MIB) -> None:
    await service.live.upsert_pod(pod_id=pod, fields={
        "capacity": capacity, "max_loading": 4, "labels": [f"rt:{runtime}"], "runtime": runtime, "default_size": 7 * MIB,
    })


async def _copy(service: SchedulerService, model: str, pod: str, size: int) -> None:
    assert (await service.live.reserve(model_id=model, pod_id=pod, size=size, exclusive=False))[0]
    assert await service.live.settle(model_id=model, pod_id=pod, size=size)


async def test_pressure_counts_capacity_evictions_and_the_lru_age(
    admin: tuple[SchedulerService, httpx.AsyncClient], prefix: str
) -> None:
    service, client = admin
    rt, other = f"rt-{prefix}", f"other-{prefix}"
    a, b, c = f"{rt}-0", f"{rt}-1", f"{other}-0"
    for pod, runtime in ((a, rt), (b, rt), (c, other)):
        await _pod(service, pod, runtime)
    big, small, unknown = f"big-{prefix}", f"small-{prefix}", f"gone-{prefix}"
    for model, size in ((big, 30 * MIB), (small, 5 * MIB)):
        await service.registry.create_model({
            "id": model, "model_type": "sklearn", "storage_uri": "s3://b/m", "measured_size": size,
        })
    await _copy(service, big, a, 30 * MIB)
    await _copy(service, small, b, 5 * MIB)
    await service.live.add_usage({big: 1}, at_ms=int(time.time() * 1000))
    events = service.events
    await events.record("evicted", model_id=big, pod_id=a, message="to make room for x")
    await events.record("evicted", model_id=small, pod_id=b, message="to make room for y")
    await events.record("evicted", model_id=unknown, pod_id=b, message="to make room for z")   # pod's default size
    await events.record("evicted", model_id=big, pod_id=a, message=f"pod {a} drained")          # a drain: not pressure
    await events.record("evicted", model_id=big, pod_id=c, message="to make room for w")        # another runtime
    await events.record("unloaded", model_id=big, pod_id=a, message="admin")                    # not an eviction

    response = await client.get(f"/v1/runtimes/{rt}/pressure", params={"windowSeconds": 30})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["runtime"] == rt and body["windowSeconds"] == 30
    assert body["evictions"] == 3
    assert body["evictedBytes"] == (30 + 5 + 7) * MIB
    assert body["evictedBytesPerMinute"] == pytest.approx((30 + 5 + 7) * MIB * 2)
    assert body["capacityBytes"] == 200 * MIB and body["allocatedBytes"] == 35 * MIB
    assert [p["id"] for p in body["pods"]] == [a, b]
    # copies loaded just now: young (the exact rule is tested on compute_pressure)
    assert 0 <= body["lruCopyAgeSeconds"] < 30
    by_pod = {p["id"]: p for p in body["pods"]}
    assert by_pod[a]["loadedCopies"] == 1 and by_pod[b]["loadedCopies"] == 1

    # draining pods leave the totals and the LRU age
    await service.live.set_draining(b, True)
    drained = (await client.get(f"/v1/runtimes/{rt}/pressure")).json()
    assert drained["capacityBytes"] == 100 * MIB and drained["allocatedBytes"] == 30 * MIB
    assert {p["id"]: p["draining"] for p in drained["pods"]} == {a: False, b: True}


async def test_a_runtime_without_pods_answers_zeros(admin: tuple[SchedulerService, httpx.AsyncClient]) -> None:
    _, client = admin
    body = (await client.get("/v1/runtimes/nothing-here/pressure")).json()
    assert body["pods"] == [] and body["evictions"] == 0 and body["lruCopyAgeSeconds"] is None
    assert body["windowSeconds"] == 60


@pytest.mark.parametrize("window", ["0", "-1", "3601", "soon"])
async def test_bad_windows_are_422(admin: tuple[SchedulerService, httpx.AsyncClient], window: str) -> None:
    _, client = admin
    response = await client.get("/v1/runtimes/x/pressure", params={"windowSeconds": window})
    assert response.status_code == 422 and "windowSeconds" in response.text


async def test_the_read_token_is_required(admin: tuple[SchedulerService, httpx.AsyncClient]) -> None:
    _, client = admin
    response = await client.get("/v1/runtimes/x/pressure", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


async def test_openapi_documents_the_response(admin: tuple[SchedulerService, httpx.AsyncClient]) -> None:
    _, client = admin
    doc = (await client.get("/openapi.json")).json()
    op = doc["paths"]["/v1/runtimes/{name}/pressure"]["get"]
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/RuntimePressure")
    props = doc["components"]["schemas"]["RuntimePressure"]["properties"]
    assert {"evictedBytesPerMinute", "lruCopyAgeSeconds", "pods", "evictions"} <= set(props)
    assert {"401", "422"} <= set(op["responses"])
