"""The route log and the route hub against a real Redis: what the state-changing scripts
log, loading a table, positions and reloads, wake-ups, the hub's subscribers and the
WatchRoutes stream over a real socket."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from meshserve.common.grpcutil import ExceptionToStatusInterceptor
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc
from meshserve.scheduler.routing.hub import RouteHub, load_table
from meshserve.scheduler.routing.log import LOG_LENGTH, Position
from meshserve.scheduler.routing.table import RouteTable
from meshserve.scheduler.server import SchedulerServicer, add_to_server
from meshserve.scheduler.service import SchedulerService
from meshserve.scheduler.store.live import LiveState

CAPACITY = 1_000
Routes = dict[str, list[tuple[str, str, str]]]


async def _pods(live: LiveState, n: int, *, capacity: int = CAPACITY) -> list[str]:
    ids = [f"pod-{i}" for i in range(n)]
    for i, pod in enumerate(ids):
        await live.upsert_pod(pod_id=pod, fields={
            "capacity": capacity, "max_loading": 100, "labels": [],
            "grpc_address": f"10.0.0.{i}:8001", "rest_address": f"10.0.0.{i}:8002",
        })
    return ids


def at(pod: str) -> tuple[str, str, str]:
    i = pod.split("-")[1]
    return (pod, f"10.0.0.{i}:8001", f"10.0.0.{i}:8002")


async def _load(live: LiveState, model: str, pod: str, *, settle: bool = True) -> None:
    assert (await live.reserve(model_id=model, pod_id=pod, size=10, exclusive=False))[0]
    if settle:
        assert await live.settle(model_id=model, pod_id=pod, size=10)


def entries_of(flat: Sequence[bytes]) -> list[tuple[str, ...]]:
    return [tuple(x.decode() for x in flat[i : i + 3]) for i in range(0, len(flat), 3)]


def routes_in(update: pb.RouteUpdate) -> Routes:
    return {r.model_id: [(e.pod_id, e.grpc_address, e.rest_address) for e in r.endpoints] for r in update.routes}


async def _truth(live: LiveState, models: Sequence[str]) -> Routes:
    """Routes as the per-model reads say (`copies_many` + `pods`), registered models only."""
    registered = await live.model_ids()
    pods = {p.pod_id: p for p in await live.pods()}
    return {
        m: [(c.pod_id, pods[c.pod_id].grpc_address, pods[c.pod_id].rest_address)
            for c in recs if c.state == "loaded" and c.pod_id in pods]
        for m, recs in (await live.copies_many(models)).items()
        if m in registered
    }


def _table_routes(table: RouteTable, models: Sequence[str]) -> Routes:
    return {m: route for m in models if (route := table.route(m)) is not None}


# -- what is logged ----------------------------------------------------------------------
async def test_every_change_that_moves_a_route_is_logged_once_in_order(live: LiveState) -> None:
    await live.sync_registry(model_ids=[], vmodels={})
    start = await live.routes.position()
    a, b = await _pods(live, 2)
    await live.upsert_pod(pod_id=a, fields={"capacity": CAPACITY, "heartbeat_ms": 5})   # same addresses: nothing
    await _load(live, "m", a, settle=False)              # a loading copy is not routed: nothing
    await live.settle(model_id="m", pod_id=a, size=10)
    await live.add_model("m")                            # R, then its loaded copies
    await _load(live, "n", b, settle=False)
    await live.release(model_id="n", pod_id=b)           # released while loading: nothing
    await _load(live, "m", b)
    await live.release(model_id="m", pod_id=a)
    await live.redis.delete(live.k_released(a))          # past the grace after a release ...
    await live.adopt(model_id="m", pod_id=a, size=10)    # ... the pod still reports it: adopted
    await live.upsert_pod(pod_id=b, fields={"grpc_address": "10.9.9.9:8001"})
    await live.set_vmodel("v", "m")
    await live.remove_pod(b)
    await live.remove_model("m")
    await live.delete_vmodel("v")
    entries = await live.routes.read(start)
    assert await live.routes.read(start, attempts=0) == entries    # the atomic script: the same
    assert entries_of(entries.flat) == [
        ("A", a, "13:10.0.0.0:800110.0.0.0:8002"),
        ("A", b, "13:10.0.0.1:800110.0.0.1:8002"),
        ("+", "m", a),
        ("R", "m", ""),
        ("+", "m", a),
        ("+", "m", b),
        ("-", "m", a),
        ("+", "m", a),
        ("A", b, "13:10.9.9.9:800110.0.0.1:8002"),
        ("V", "v", "m"),
        ("P", b, ""),
        ("U", "m", ""),
        ("X", "v", ""),
    ]
    assert entries.position == Position(start.epoch, start.seq + 13) and not entries.reload


async def test_read_pages_through_the_log(live: LiveState) -> None:
    await live.sync_registry(model_ids=[], vmodels={})
    start = await live.routes.position()
    await live.routes.log([("R", m, "") for m in ("x", "y", "z")])
    first = await live.routes.read(start, most=2)
    assert [e[1] for e in entries_of(first.flat)] == ["x", "y"] and first.count == 2
    assert await live.routes.read(start, most=2, attempts=0) == first
    rest = await live.routes.read(first.position)
    assert [e[1] for e in entries_of(rest.flat)] == ["z"] and rest.position.seq == start.seq + 3
    idle = await live.routes.read(rest.position)
    assert (idle.count, idle.reload, idle.position) == (0, False, rest.position)


async def test_a_position_the_log_no_longer_holds_needs_a_reload(live: LiveState) -> None:
    await live.sync_registry(model_ids=[], vmodels={})
    start = await live.routes.position()
    # a new epoch (the registry mirror rebuilt, or Redis restarted and lost the log)
    await live.sync_registry(model_ids=["m"], vmodels={})
    entries = await live.routes.read(start)
    assert entries.reload and entries.position.epoch != start.epoch
    assert await live.routes.read(start, attempts=0) == entries
    assert (await live.routes.read(entries.position)).reload is False
    # ahead of the log
    assert (await live.routes.read(Position(entries.position.epoch, entries.position.seq + 1))).reload
    # behind its start: more than LOG_LENGTH entries since
    here = await live.routes.position()
    for lo in range(0, LOG_LENGTH + LOG_LENGTH // 4 + 1, 10_000):
        await live.routes.log([("R", f"m{i}", "") for i in range(lo, lo + 10_000)])
    assert await live.redis.llen(f"{live.p}:routelog") == 3 * LOG_LENGTH
    assert (await live.routes.read(here)).reload and (await live.routes.read(here, attempts=0)).reload
    newest = await live.routes.position()
    oldest_kept = Position(newest.epoch, newest.seq - LOG_LENGTH)
    kept = await live.routes.read(oldest_kept, most=LOG_LENGTH)
    assert not kept.reload and kept.count == LOG_LENGTH
    assert entries_of(kept.flat[:3]) == [("R", f"m{newest.seq - LOG_LENGTH - here.seq}", "")]
    assert await live.routes.read(oldest_kept, most=LOG_LENGTH, attempts=0) == kept


async def test_the_waiter_wakes_for_changes_and_times_out_without(live: LiveState) -> None:
    await live.sync_registry(model_ids=[], vmodels={})
    waiter = live.routes.waiter()
    try:
        assert await waiter.wait(0.01) is True        # an entry exists: the first call returns
        assert await waiter.wait(0.01) is False       # nothing newer
        woken = asyncio.ensure_future(waiter.wait(30))
        await live.routes.log([("R", "a", ""), ("R", "b", "")])
        assert await asyncio.wait_for(woken, 30) is True
        assert await waiter.wait(0.01) is False
    finally:
        await waiter.close()


# -- loading a table ---------------------------------------------------------------------
async def test_a_loaded_table_agrees_with_copies_and_pods(live: LiveState) -> None:
    odd = ["with\nnewline", "ütf-8 ✓", "\n", "x" * 300]
    models = [f"m{i}" for i in range(40)] + odd
    await live.sync_registry(model_ids=models[::2] + odd, vmodels={"v": "m0"})
    pods = await _pods(live, 6)
    rng = random.Random(3)
    for m in models:
        for pod in rng.sample(pods, rng.randint(0, 4)):
            await _load(live, m, pod, settle=rng.random() < 0.8)
    await live.remove_pod(pods[0])
    await live.redis.delete(live.k_pod(pods[1]))   # its hash gone, still in the set: not routed
    expected = await _truth(live, models)
    assert any(expected.values()) and set(odd) <= set(expected)
    table, position = await load_table(live.routes)
    assert _table_routes(table, models) == expected
    assert table.vmodels == {"v": "m0"} and position == await live.routes.position()
    state = await live.routes.load(chunk=3)
    assert sorted(state.loaded) == sorted(
        (m.encode(), c.pod_id.encode())
        for m, recs in (await live.copies_many([m.decode() for m in state.models])).items()
        for c in recs if c.state == "loaded"
    )


# -- the hub -------------------------------------------------------------------------------
async def _next(sub: AsyncIterator[bytes]) -> pb.RouteUpdate:
    return pb.RouteUpdate.FromString(await asyncio.wait_for(anext(sub), 30))


async def test_hub_subscribers_get_a_snapshot_then_changes_and_a_snapshot_on_a_new_epoch(live: LiveState) -> None:
    await live.sync_registry(model_ids=["m1", "m2"], vmodels={"v": "m1"})
    (a,) = await _pods(live, 1)
    await _load(live, "m1", a)
    hub = RouteHub(live.routes, poll_seconds=30)
    first, second = hub.subscribe(), hub.subscribe()
    try:
        snapshot = await _next(first)
        assert snapshot.snapshot and routes_in(snapshot) == {"m1": [at(a)], "m2": []}
        assert {v.vmodel_id: v.model_id for v in snapshot.vmodels} == {"v": "m1"}
        assert snapshot.version == (await live.routes.position()).seq
        await _load(live, "m2", a)
        change = await _next(first)
        assert not change.snapshot and routes_in(change) == {"m2": [at(a)]}
        assert change.version == snapshot.version + 1
        # a later subscriber: the table as it is now, then the same changes as the others
        late = await _next(second)
        assert late.snapshot and routes_in(late) == {"m1": [at(a)], "m2": [at(a)]}
        await live.remove_model("m1")
        await live.set_vmodel("v", "m2")
        for sub in (first, second):
            got = await _next(sub)
            if not got.vmodels:   # the hub may have woken between the two changes
                got.MergeFrom(await _next(sub))
            assert list(got.removed_models) == ["m1"] and [(v.vmodel_id, v.model_id) for v in got.vmodels] == [("v", "m2")]
        await live.sync_registry(model_ids=["m2"], vmodels={})
        for sub in (first, second):
            again = await _next(sub)
            assert again.snapshot and routes_in(again) == {"m2": [at(a)]} and not again.vmodels
    finally:
        await first.aclose()
        await second.aclose()
        await hub.close()


async def test_changes_made_while_the_table_loads_are_not_lost(live: LiveState) -> None:
    models = [f"m{i:04d}" for i in range(3_000)]
    await live.sync_registry(model_ids=models, vmodels={})
    pods = await _pods(live, 3, capacity=10**9)

    async def churn() -> None:
        rng = random.Random(5)
        for m in rng.sample(models, 300):
            await _load(live, m, rng.choice(pods))
            if rng.random() < 0.3:
                await live.remove_model(rng.choice(models))

    hub = RouteHub(live.routes, poll_seconds=30)
    sub = hub.subscribe()
    table: Routes = {}
    try:
        writer = asyncio.ensure_future(churn())
        first = asyncio.ensure_future(anext(sub))     # the hub loads its table while churn runs
        await writer
        updates = [pb.RouteUpdate.FromString(await asyncio.wait_for(first, 30))]
        expected = await _truth(live, models)
        while True:
            for update in updates:
                if update.snapshot:
                    table = {}
                table.update(routes_in(update))
                for m in update.removed_models:
                    table.pop(m, None)
            if table == expected:
                break
            updates = [await _next(sub)]
    finally:
        await sub.aclose()
        await hub.close()


async def test_a_subscriber_that_falls_behind_gets_a_snapshot(live: LiveState) -> None:
    await live.sync_registry(model_ids=[], vmodels={})
    hub = RouteHub(live.routes, poll_seconds=30, queue_limit=2)
    slow, fast = hub.subscribe(), hub.subscribe()
    try:
        assert (await _next(slow)).snapshot and (await _next(fast)).snapshot
        for i in range(3):
            await live.add_model(f"m{i}")
            got = await _next(fast)
            if f"m{i}" not in routes_in(got):   # woken before the change landed: one more
                got = await _next(fast)
            assert f"m{i}" in routes_in(got)
        caught_up = await _next(slow)
        assert caught_up.snapshot and set(routes_in(caught_up)) == {"m0", "m1", "m2"}
    finally:
        await slow.aclose()
        await fast.aclose()
        await hub.close()


async def test_an_entry_the_table_cannot_apply_makes_the_hub_load_it_again(live: LiveState) -> None:
    await live.sync_registry(model_ids=["m"], vmodels={})
    hub = RouteHub(live.routes, poll_seconds=30)
    sub = hub.subscribe()
    try:
        assert (await _next(sub)).snapshot
        await live.routes.log([("Q", "from-a-newer-version", "")])
        again = await _next(sub)
        assert again.snapshot and set(routes_in(again)) == {"m"}
        await live.add_model("o")
        assert set(routes_in(await _next(sub))) == {"o"}
    finally:
        await sub.aclose()
        await hub.close()


async def test_watch_routes_streams_the_hub_over_grpc(service: SchedulerService) -> None:
    live = service.live
    await live.sync_registry(model_ids=["m"], vmodels={})
    (a,) = await _pods(live, 1)
    servicer = SchedulerServicer(service)
    server = grpc.aio.server(interceptors=[ExceptionToStatusInterceptor()])
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            call = stub.WatchRoutes(pb.WatchRoutesRequest())
            first = await asyncio.wait_for(call.read(), 30)
            assert first.snapshot and routes_in(first) == {"m": []}
            await _load(live, "m", a)
            change = await asyncio.wait_for(call.read(), 30)
            assert routes_in(change) == {"m": [at(a)]} and not change.snapshot
            # the other methods are still the generated handlers
            status = await stub.GetModelStatus(pb.GetModelStatusRequest(model_id="nope"))
            assert status.status == pb.NOT_FOUND
            # what a use case raises becomes its status (the server's interceptor)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.EnsureLoaded(pb.EnsureLoadedRequest(model_id="nope"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == "model 'nope' not found: register it first (POST /v1/models)"
            call.cancel()
    finally:
        await server.stop(None)
        await servicer.close()
