"""The registry mirror in Redis after Redis lost its data (real Redis + Postgres).

A pod that reports copies Redis does not know has them adopted, and an adopted copy's
route goes out for the models the mirror lists at that moment. So the mirror must be back
before the adoption: else the route goes out as a removal, and routers drop the model
(their fallback too) until the mirror loop rebuilds it. A burst of reports from every
pod after a restart shares one rebuild.

"Redis lost its data" is simulated by deleting the test's keys (its own prefix: the
Redis is shared); a restart from an older snapshot of the data by a marker naming
another run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.scheduler.routing.hub import RouteHub, load_table
from meshserve.scheduler.routing.log import ENTRY, Position
from meshserve.scheduler.service import ModelSpec, SchedulerService
from meshserve.scheduler.store.live import LiveState

Routes = dict[str, list[tuple[str, str, str]]]


def _pod(pod_id: str, i: int) -> dict[str, Any]:
    return {
        "pod_id": pod_id,
        "runtime": "rt",
        "labels": ["rt:rt", "mt:sklearn"],
        "management_address": "127.0.0.1:1",  # nothing listens: a puller call would fail fast
        "grpc_address": f"10.0.0.{i}:8001",
        "rest_address": f"http://10.0.0.{i}:8002",
        "capacity": 1 << 30,
        "used": 0,
        "max_loading": 2,
        "default_size": 1 << 20,
    }


def _endpoint(pod: dict[str, Any]) -> tuple[str, str, str]:
    return (pod["pod_id"], pod["grpc_address"], pod["rest_address"])


async def _register(service: SchedulerService, model_id: str) -> None:
    await service.register_model(ModelSpec(model_id=model_id, model_type="sklearn", storage_uri="s3://b/m.joblib"))


async def _lose_data(live: LiveState) -> None:
    """What a Redis restart without persistence does to this test's keys."""
    keys = [k async for k in live.redis.scan_iter(match=f"{live.p}:*")]
    assert keys
    await live.redis.delete(*keys)


async def _syncs(live: LiveState) -> int:
    """Writes of the mirror since its marker was lost (counted in the marker, by each write's MULTI)."""
    return int(await live.redis.hget(live.k_mirror, "syncs") or 0)


async def _next(sub: AsyncIterator[bytes]) -> pb.RouteUpdate:
    return pb.RouteUpdate.FromString(await asyncio.wait_for(anext(sub), 30))


def _routes_in(update: pb.RouteUpdate) -> Routes:
    return {r.model_id: [(e.pod_id, e.grpc_address, e.rest_address) for e in r.endpoints] for r in update.routes}


async def _routed_never_removed(
    sub: AsyncIterator[bytes], model: str, endpoint: tuple[str, str, str], routes: Routes, *, what: str
) -> None:
    """Follow `sub` until `model`'s route is exactly `endpoint`; no update on the way may
    say the model is gone."""
    while routes.get(model) != [endpoint]:
        update = await _next(sub)
        assert model not in update.removed_models, f"the {what} copy's route went out as a removal"
        if update.snapshot:
            routes = {}
        routes.update(_routes_in(update))


async def test_a_copy_reported_after_redis_lost_its_data_is_routed_not_removed(
    service: SchedulerService, prefix: str
) -> None:
    live = service.live
    model = f"{prefix}-m"
    await _register(service, model)
    await service.mirror.ensure()   # the mirror loop's pass at start
    assert await live.mirror_current() and await _syncs(live) == 1
    hub = RouteHub(live.routes, poll_seconds=30)
    sub = hub.subscribe()
    try:
        first = await _next(sub)
        assert first.snapshot and _routes_in(first) == {model: []}

        await _lose_data(live)
        assert not await live.mirror_current()
        # a heartbeat with nothing to adopt does not rebuild the mirror (no extra round
        # trip); as the first write it starts a new log epoch, and the hub loads its table
        # again: without the mirror, the model is not in it
        await service.pods.report_pod(_pod(f"{prefix}-other", 9), [])
        assert not await live.mirror_current()
        reloaded = await _next(sub)
        assert reloaded.snapshot and model not in _routes_in(reloaded)

        pod = _pod(f"{prefix}-a", 1)
        await service.pods.report_pod(pod, [model])

        # the route published for the model gets the pod, and the subscriber is never told
        # the model is gone on the way
        await _routed_never_removed(sub, model, _endpoint(pod), {}, what="adopted")
        # the mirror is back, marked as written in this Redis, and a subscriber that comes
        # now (a table loaded now) gets the same route
        assert model in await live.model_ids()
        assert await live.mirror_current() and await _syncs(live) == 1
        table, _ = await load_table(live.routes)
        assert table.route(model) == [_endpoint(pod)]
    finally:
        await sub.aclose()
        await hub.close()


async def test_a_copy_loaded_after_redis_lost_its_data_is_routed_not_removed(
    service: SchedulerService, prefix: str
) -> None:
    """A first copy loaded (reserve, then settle) into a Redis that lost its data, with no
    report to adopt it: the route hub checks the mirror before it loads the new epoch's
    table, so the copy's route goes out for a registered model, not as a removal."""
    live = service.live
    model = f"{prefix}-m"
    await _register(service, model)
    await service.mirror.ensure()
    assert await live.mirror_current() and await _syncs(live) == 1
    # built as app.py builds the servicer's
    hub = RouteHub(live.routes, poll_seconds=30, before_load=service.mirror.ensure)
    sub = hub.subscribe()
    try:
        first = await _next(sub)
        # (the registry is shared by the tests: other tests' models may be listed too)
        assert first.snapshot and _routes_in(first)[model] == []

        await _lose_data(live)
        pod = _pod(f"{prefix}-a", 1)
        await service.pods.report_pod(pod, [])   # the first write: a new epoch, and the hub reloads
        assert not await live.mirror_current()
        reloaded = await _next(sub)
        while not reloaded.snapshot:
            assert model not in reloaded.removed_models, "the model went out as a removal"
            reloaded = await _next(sub)

        ok, why = await live.reserve(model_id=model, pod_id=pod["pod_id"], size=1 << 20, exclusive=False)
        assert ok, why
        assert await live.settle(model_id=model, pod_id=pod["pod_id"], size=1 << 20)

        await _routed_never_removed(sub, model, _endpoint(pod), _routes_in(reloaded), what="loaded")
        # the hub's reload rebuilt the mirror before loading: the snapshot listed the model
        assert _routes_in(reloaded).get(model) == []
        assert await live.mirror_current() and await _syncs(live) == 1
        table, _ = await load_table(live.routes)
        assert table.route(model) == [_endpoint(pod)]
    finally:
        await sub.aclose()
        await hub.close()


async def test_reports_from_many_pods_after_redis_lost_its_data_share_one_rebuild(
    service: SchedulerService, prefix: str
) -> None:
    live = service.live
    model = f"{prefix}-m"
    await _register(service, model)
    await service.mirror.ensure()
    await _lose_data(live)

    pods = [_pod(f"{prefix}-p{i:02d}", i) for i in range(20)]
    await asyncio.gather(*(service.pods.report_pod(pod, [model]) for pod in pods))

    assert await live.mirror_current() and await _syncs(live) == 1
    table, _ = await load_table(live.routes)
    assert table.route(model) == sorted(_endpoint(pod) for pod in pods)
    # every adoption is in the log since the rebuild's new epoch: none came before it
    position = await live.routes.position()
    logged = await live.redis.llen(f"{live.p}:routelog") // ENTRY
    since_rebuild = await live.routes.read(Position(position.epoch, position.seq - logged))
    assert not since_rebuild.reload
    flat = [x.decode() for x in since_rebuild.flat]
    adopted = {(a, b) for kind, a, b in zip(flat[::3], flat[1::3], flat[2::3], strict=True) if kind == "+"}
    assert adopted == {(model, pod["pod_id"]) for pod in pods}


async def test_a_mirror_marked_in_another_redis_run_is_written_again(service: SchedulerService, prefix: str) -> None:
    """A Redis restarted from an older snapshot of its data keeps a marker, naming the old
    run: the mirror in it may lack models registered since."""
    live = service.live
    await _register(service, f"{prefix}-old")
    await service.mirror.ensure()
    await service.mirror.ensure()   # current: nothing written
    assert await _syncs(live) == 1
    await live.redis.srem(f"{live.p}:models", f"{prefix}-old")   # as in the older snapshot
    await live.redis.hset(live.k_mirror, "run_id", "a-run-before-the-restart")
    assert not await live.mirror_current()
    await service.mirror.ensure()
    assert await live.mirror_current() and await _syncs(live) == 2
    assert f"{prefix}-old" in await live.model_ids()


async def test_a_heartbeat_goes_through_when_the_mirror_cannot_be_rebuilt(
    make_service: Callable[..., AbstractAsyncContextManager[SchedulerService]],
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Postgres down: the report still succeeds, the pod is registered and a warning says
    why the mirror is missing; the rebuild is left to the mirror loop (no marker yet). (The
    copy itself is not adopted here: adopting needs the model's record, for its size.)"""
    async with make_service("postgresql://postgres@127.0.0.1:9/nowhere") as service:  # nothing listens on port 9
        with caplog.at_level(logging.WARNING, logger="meshserve.scheduler.service"):
            await service.pods.report_pod(_pod(f"{prefix}-a", 1), [f"{prefix}-m"])
        assert [p.pod_id for p in await service.live.pods()] == [f"{prefix}-a"]
        assert not await service.live.mirror_current()
        assert any("without the registry mirror" in r.getMessage() for r in caplog.records)
