"""The registry's `runtimes` rows, kept by the scheduler from its live pods, and the
runtime default model size placement falls back to (real Redis + Postgres)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx

from meshserve.scheduler.api import create_app
from meshserve.scheduler.service import SchedulerService
from meshserve.scheduler.store.live import now_ms
from meshserve.scheduler.store.registry import RuntimeRecord

MIB = 1 << 20


def _pod(pod_id: str, runtime: str, **fields: Any) -> dict[str, Any]:
    return {
        "pod_id": pod_id,
        "runtime": runtime,
        "labels": [f"rt:{runtime}", "mt:sklearn", "mt:sklearn:0", "mt:xgboost", "pv:grpc-v2", "pv:v2"],
        "management_address": "127.0.0.1:1",  # nothing listens: a puller call fails fast
        "grpc_address": "127.0.0.1:1",
        "rest_address": "http://127.0.0.1:1",
        "capacity": 512 * MIB,
        "used": 0,
        "max_loading": 2,
        "default_size": 3 * MIB,
        **fields,
    }


async def _rows(service: SchedulerService, prefix: str) -> dict[str, RuntimeRecord]:
    records, _ = await service.registry.list_runtimes(limit=1000)
    return {r.name: r for r in records if r.name.startswith(prefix)}


async def test_runtime_rows_follow_the_live_pods(service: SchedulerService, prefix: str) -> None:
    one, two = f"{prefix}-mlserver", f"{prefix}-other"
    await service.pods.report_pod(_pod(f"{prefix}-a", one), [])
    await service.pods.report_pod(_pod(f"{prefix}-b", one, capacity=600 * MIB), [])
    await service.pods.report_pod(_pod(f"{prefix}-c", two, default_size=7 * MIB, max_loading=1), [])

    assert sorted(set(await service.pods.sync_runtimes()) & {one, two}) == [one, two]
    rows = await _rows(service, prefix)
    assert rows[one] == RuntimeRecord(
        name=one,
        spec={"supportedModelFormats": ["sklearn:0", "xgboost"], "protocolVersions": ["grpc-v2", "v2"]},
        labels=("mt:sklearn", "mt:sklearn:0", "mt:xgboost", "pv:grpc-v2", "pv:v2", f"rt:{one}"),
        default_model_size=3 * MIB,
        pod_capacity_bytes=600 * MIB,
        max_loading_concurrency=2,
        pods=2,
    )
    assert (rows[two].pods, rows[two].default_model_size, rows[two].max_loading_concurrency) == (1, 7 * MIB, 1)
    first_update = rows[one].updated_at
    assert first_update is not None and rows[one].created_at is not None

    assert await service.pods.sync_runtimes() == []  # nothing changed: nothing written
    assert (await _rows(service, prefix))[one].updated_at == first_update

    await service.pods.pod_leaving(f"{prefix}-b")
    await service.live.upsert_pod(pod_id=f"{prefix}-c", fields={"heartbeat_ms": now_ms() - 60_000})  # silent pod
    assert sorted(await service.pods.sync_runtimes()) == [one, two]
    rows = await _rows(service, prefix)
    assert (rows[one].pods, rows[one].pod_capacity_bytes) == (1, 512 * MIB)
    assert rows[two].pods == 0 and rows[two].default_model_size == 7 * MIB  # kept, with no pods
    assert rows[one].updated_at is not None and rows[one].updated_at > first_update


async def test_runtime_sync_is_best_effort_when_postgres_is_down(make_service: Callable[..., AbstractAsyncContextManager[SchedulerService]], prefix: str) -> None:
    async with make_service("postgresql://postgres@127.0.0.1:9/nowhere") as service:  # nothing listens on port 9
        await service.pods.report_pod(_pod(f"{prefix}-a", f"{prefix}-rt"), [])
        assert await service.pods.sync_runtimes() == []
        assert [p.pod_id for p in await service.live.pods()] == [f"{prefix}-a"]  # the pod still counts


async def test_size_falls_back_to_the_runtime_default_of_the_candidate_pods(service: SchedulerService, prefix: str) -> None:
    await service.pods.report_pod(_pod(f"{prefix}-a", f"{prefix}-small", default_size=2 * MIB), [])
    await service.pods.report_pod(_pod(f"{prefix}-b", f"{prefix}-big", default_size=5 * MIB), [])
    record = await service.registry.create_model(
        {"id": f"{prefix}-nosize", "model_type": "sklearn", "storage_uri": "s3://b/m.joblib"}
    )
    pods = {p.pod_id: p for p in await service.live.pods()}

    # no measured, declared or predicted size, and the puller cannot predict (unreachable)
    assert await service.loader.size_for(record, [pods[f"{prefix}-a"]]) == 2 * MIB
    assert await service.loader.size_for(record, [pods[f"{prefix}-a"], pods[f"{prefix}-b"]]) == 5 * MIB
    await service.registry.update_model(record.id, declared_size=9 * MIB)
    declared = await service.registry.get_model(record.id)
    assert await service.loader.size_for(declared, [pods[f"{prefix}-a"]]) == 9 * MIB


async def test_adopted_copies_are_sized_like_placements(service: SchedulerService, prefix: str) -> None:
    """A copy a pod reports that live state does not know (after a Redis restart) gets
    the same size placement would use: measured, else declared, else predicted, else the
    runtime default."""
    declared, bare = f"{prefix}-declared", f"{prefix}-bare"
    for model_id, size in ((declared, 9 * MIB), (bare, 0)):
        await service.registry.create_model(
            {"id": model_id, "model_type": "sklearn", "storage_uri": "s3://b/m.joblib", "declared_size": size}
        )
    await service.pods.report_pod(_pod(f"{prefix}-a", f"{prefix}-rt"), [declared, bare])
    assert await service.live.pod_allocations(f"{prefix}-a") == {declared: 9 * MIB, bare: 3 * MIB}


async def test_runtimes_api_lists_rows_paginated(service: SchedulerService, prefix: str) -> None:
    for i in range(3):
        await service.pods.report_pod(_pod(f"{prefix}-p{i}", f"{prefix}-rt{i}"), [])
    await service.pods.sync_runtimes()
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        body = (await client.get("/v1/runtimes?limit=1000")).json()
        mine = [r for r in body["items"] if r["name"].startswith(prefix)]
        assert [r["name"] for r in mine] == [f"{prefix}-rt0", f"{prefix}-rt1", f"{prefix}-rt2"]
        assert mine[0] | {"createdAt": None, "updatedAt": None} == {
            "name": f"{prefix}-rt0",
            "supportedModelFormats": ["sklearn:0", "xgboost"],
            "protocolVersions": ["grpc-v2", "v2"],
            "labels": ["mt:sklearn", "mt:sklearn:0", "mt:xgboost", "pv:grpc-v2", "pv:v2", f"rt:{prefix}-rt0"],
            "defaultModelSizeBytes": 3 * MIB,
            "podCapacityBytes": 512 * MIB,
            "maxLoadingConcurrency": 2,
            "pods": 1,
            "createdAt": None,
            "updatedAt": None,
        }
        assert mine[0]["updatedAt"] is not None
        page = (await client.get("/v1/runtimes?offset=1&limit=1")).json()
        assert (page["total"], page["offset"], page["limit"], len(page["items"])) == (body["total"], 1, 1, 1)
        assert page["items"][0]["name"] == body["items"][1]["name"]
        for bad in ("limit=0", "limit=1001", "offset=-1", "limit=x"):
            response = await client.get(f"/v1/runtimes?{bad}")
            assert response.status_code == 422 and response.json()["detail"], bad
