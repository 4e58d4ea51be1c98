"""Decision latency of `place()` on a large cluster, and the cost of publishing routes."""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bench.placement.traces import model_sizes
from meshserve.common.proto.meshserve.v1 import scheduler_pb2
from meshserve.scheduler.models import (
    CopyState,
    CopyView,
    EvictionPolicy,
    PlacementConfig,
    PlacementRequest,
    PodView,
)
from meshserve.scheduler.placement.index import ClusterIndex, place_indexed
from meshserve.scheduler.placement.scan import place
from meshserve.scheduler.routing.routes import EndpointTuple, encode_route_update

if TYPE_CHECKING:
    from meshserve.scheduler.store.live import LiveState

LABELS = frozenset({"rt:mlserver-1.x", "mt:sklearn", "pv:grpc-v2"})
T = TypeVar("T")


@dataclass(frozen=True)
class Timings:
    p50_us: float
    p99_us: float
    max_us: float
    cpu_p50_us: float      # CPU time of the calling thread (less sensitive to other processes)
    cpu_p99_us: float

    @staticmethod
    def of(wall: list[float], cpu: list[float]) -> Timings:
        wall, cpu = sorted(wall), sorted(cpu)
        return Timings(
            _percentile(wall, 0.5), _percentile(wall, 0.99), wall[-1],
            _percentile(cpu, 0.5), _percentile(cpu, 0.99),
        )


@dataclass(frozen=True)
class Latency:
    calls: int
    evicting: int          # calls whose plan evicted something
    failed: int
    indexed: Timings       # place_indexed() on a ClusterIndex kept across calls
    reference: Timings     # place() on the list of views (one Python pass over the pods)
    update: Timings        # ClusterIndex.update() of the changed pod after each plan
    agreed: int            # calls where both returned the same Plan


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def placement_latency(
    *, models: int, pods: int, calls: int, policy: EvictionPolicy, seed: int,
    eviction_candidates: int = PlacementConfig.eviction_candidates,
) -> Latency:
    """Time `place_indexed()` and `place()` for `calls` cold loads on `pods` pods holding 60% of `models` models.

    The views are built once (as an incremental in-memory view in the service would
    keep them), then `gc.freeze()` moves them out of the collector's way, as a
    long-running scheduler would after loading its state.

    Pods are full to within a little slack (< 200 MiB), so a third or more of the calls evict. 5% of models have
    minCopies 1, some copies are loading or serving. Each plan (the fast path's) is
    applied, only the changed pod's view is rebuilt (an incremental view) and the
    `ClusterIndex` is updated with it (timed separately). Both paths see the same state
    on every call; the number of identical plans is reported.
    """
    rng = random.Random(seed)
    sizes = [int(s) for s in model_sizes(n=models, seed=seed)]
    names = [f"model-{i:06d}__isvc-{i * 2654435761 % 16**10:010x}" for i in range(models)]
    loaded = models * 6 // 10
    pod_copies: list[dict[str, CopyView]] = [{} for _ in range(pods)]
    where: dict[str, int] = {}
    for i in range(loaded):
        j = rng.randrange(pods)
        state = CopyState.LOADING if rng.random() < 0.01 else CopyState.LOADED
        pod_copies[j][names[i]] = CopyView(
            names[i],
            sizes[i],
            state=state,
            last_used=rng.uniform(0, 3600),
            hits=rng.paretovariate(1.2),
            in_flight=1 if rng.random() < 0.02 else 0,
            loaded_at=rng.uniform(0, 3000),
        )
        where[names[i]] = j
    capacity = [sum(c.size_bytes for c in d.values()) + rng.randrange(0, 200 << 20) for d in pod_copies]
    pod_ids = [f"mlserver-{j:04d}" for j in range(pods)]

    def view(j: int) -> PodView:
        d = pod_copies[j]
        loading = sum(c.state is CopyState.LOADING for c in d.values())
        return PodView(
            pod_ids[j], capacity[j], sum(c.size_bytes for c in d.values()), LABELS,
            loading=min(loading, 1), max_loading=2, copies=tuple(d.values()),
        )

    views = [view(j) for j in range(pods)]
    min_copies = {n: 1 for n in rng.sample(names, models // 20)}
    config = PlacementConfig(
        policy=policy, min_residency_seconds=30.0, min_copies=min_copies,
        eviction_candidates=eviction_candidates,
    )
    unloaded = [n for n in names if n not in where]
    size_of = dict(zip(names, sizes, strict=True))
    index_of = {p: j for j, p in enumerate(pod_ids)}
    now = 3600.0
    index = ClusterIndex(views, warm=config)   # built once, as a long-lived scheduler would
    warm = PlacementRequest(unloaded[0], size_of[unloaded[0]], LABELS)
    place(warm, views, now=now, config=config)
    place_indexed(warm, index, now=now, config=config)
    gc.collect()
    gc.freeze()
    fast: list[float] = []
    fast_cpu: list[float] = []
    ref: list[float] = []
    ref_cpu: list[float] = []
    upd: list[float] = []
    upd_cpu: list[float] = []
    evicting = failed = agreed = 0
    for _ in range(calls):
        k = rng.randrange(len(unloaded))
        model = unloaded[k]
        request = PlacementRequest(model, size_of[model], LABELS)
        # the fast path first: it pays for any per-view cache (victim order) of new views
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        plan = place_indexed(request, index, now=now, config=config)
        fast.append((time.perf_counter_ns() - t0) / 1000.0)
        fast_cpu.append((time.thread_time_ns() - c0) / 1000.0)
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        reference = place(request, views, now=now, config=config)
        ref.append((time.perf_counter_ns() - t0) / 1000.0)
        ref_cpu.append((time.thread_time_ns() - c0) / 1000.0)
        agreed += reference == plan
        now += 0.05
        if plan.pod_id is None:
            failed += 1
            continue
        j = index_of[plan.pod_id]
        if plan.evictions:
            evicting += 1
        for e in plan.evictions:
            del pod_copies[j][e.model_id]
            del where[e.model_id]
            unloaded.append(e.model_id)
        pod_copies[j][model] = CopyView(model, size_of[model], last_used=now, hits=1.0, loaded_at=now)
        where[model] = j
        unloaded[k] = unloaded[-1]
        unloaded.pop()
        views[j] = view(j)
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        index.update(views[j])
        upd.append((time.perf_counter_ns() - t0) / 1000.0)
        upd_cpu.append((time.thread_time_ns() - c0) / 1000.0)
    gc.unfreeze()
    return Latency(
        calls, evicting, failed,
        Timings.of(fast, fast_cpu), Timings.of(ref, ref_cpu), Timings.of(upd, upd_cpu), agreed,
    )


@dataclass(frozen=True)
class Publish:
    changes: int
    messages: int
    wire_bytes: int
    median_ms: float       # compute + routes.encode_route_update (protobuf's bytes, built in Python)
    max_ms: float
    cpu_median_ms: float   # CPU time of the thread (less sensitive to other processes)
    compute_median_ms: float       # of which: applying the events and listing each changed route's endpoints
    baseline_median_ms: float      # the same messages built field by field (protobuf API)
    baseline_cpu_median_ms: float


def _publish_case(*, models: int, pods: int, changes: int, seed: int) -> tuple[
    dict[str, EndpointTuple], dict[str, set[str]], list[tuple[str, str, bool]]
]:
    """Pod endpoints, the model -> pods table before, and `changes` copy events on distinct
    models (model, pod, add: add a copy on pod, else drop one, maybe the last)."""
    rng = random.Random(seed)
    pod_ids = [f"mlserver-{j:04d}" for j in range(pods)]
    endpoints = {
        p: (p, f"10.0.{j // 250}.{j % 250}:8001", f"http://10.0.{j // 250}.{j % 250}:8002")
        for j, p in enumerate(pod_ids)
    }
    names = [f"model-{i:06d}" for i in range(models)]
    base: dict[str, set[str]] = {n: {pod_ids[i % pods]} for i, n in enumerate(names)}
    for n in rng.sample(names, models // 10):
        base[n].add(rng.choice(pod_ids))
    touched = rng.sample(names, changes)
    return endpoints, base, [(n, rng.choice(pod_ids), rng.random() < 0.5) for n in touched]


def _apply(table: dict[str, set[str]], events: list[tuple[str, str, bool]]) -> list[str]:
    changed: list[str] = []
    for model, pod, add in events:
        pods_of = table[model]
        if add:
            pods_of.add(pod)
        else:
            pods_of.pop()
        changed.append(model)
    return changed


def route_publish(*, models: int, pods: int, changes: int, batch: int, repeats: int, seed: int) -> Publish:
    """Apply `changes` copy events (load here / evict there) to a model->pods table, then
    build and serialise the `RouteUpdate` messages for every model whose route changed:
    what a relay holding the routes in its own memory would do (the scheduler's relay
    does not: its routes are computed in Redis, see `route_publish_end_to_end`).
    Timed: computing the changed routes + `routes.encode_route_update` (protobuf's bytes
    built in Python), `batch` routes per message; alternating, with the protobuf API as
    a baseline (`routes.add()` / `endpoints.add()` per route and endpoint, then
    `SerializeToString`). Both must give the same bytes."""
    endpoints, base, events = _publish_case(models=models, pods=pods, changes=changes, seed=seed)
    compute: list[float] = []

    def fast(table: dict[str, set[str]], version: int) -> list[bytes]:
        t0 = time.perf_counter()
        changed = _apply(table, events)
        routes = [(m, [endpoints[p] for p in sorted(table[m])]) for m in changed]
        compute.append((time.perf_counter() - t0) * 1000.0)
        return [
            encode_route_update(routes[lo : lo + batch], version=version + k)
            for k, lo in enumerate(range(0, len(routes), batch))
        ]

    def baseline(table: dict[str, set[str]], version: int) -> list[bytes]:
        changed = _apply(table, events)
        payloads: list[bytes] = []
        for lo in range(0, len(changed), batch):
            update = scheduler_pb2.RouteUpdate(snapshot=False, version=version)
            version += 1
            for model in changed[lo : lo + batch]:
                route = update.routes.add(model_id=model)
                for p in sorted(table[model]):
                    pid, grpc_addr, rest_addr = endpoints[p]
                    route.endpoints.add(pod_id=pid, grpc_address=grpc_addr, rest_address=rest_addr)
            payloads.append(update.SerializeToString())
        return payloads

    runs: dict[str, list[float]] = {"fast": [], "baseline": []}
    cpu: dict[str, list[float]] = {"fast": [], "baseline": []}
    out: dict[str, list[bytes]] = {}
    for r in range(repeats):
        for name, build in (("fast", fast), ("baseline", baseline)) if r % 2 == 0 else (("baseline", baseline), ("fast", fast)):
            table = {n: set(p) for n, p in base.items()}
            gc.collect()   # not the 100,000 sets just copied: their collection is the harness's
            c0 = time.thread_time()
            t0 = time.perf_counter()
            out[name] = build(table, 1000 * r + 1)
            runs[name].append((time.perf_counter() - t0) * 1000.0)
            cpu[name].append((time.thread_time() - c0) * 1000.0)
        assert out["fast"] == out["baseline"], "encode_route_update differs from the protobuf API"
    payloads = out["fast"]
    check = scheduler_pb2.RouteUpdate.FromString(payloads[0])
    assert len(check.routes) == min(batch, changes)
    return Publish(
        changes, len(payloads), sum(len(p) for p in payloads),
        statistics.median(runs["fast"]), max(runs["fast"]), statistics.median(cpu["fast"]),
        statistics.median(compute),
        statistics.median(runs["baseline"]), statistics.median(cpu["baseline"]),
    )


@dataclass(frozen=True)
class PublishEndToEnd:
    changes: int           # models whose route changed, per repeat
    entries: int           # route log entries appended per repeat (a model may change twice)
    models: int
    pods: int
    redis: str             # "MESHSERVE_REDIS_URL" or "private redis-server"
    wire_bytes: int
    median_ms: float       # hub step: read the log -> apply to the table -> RouteUpdate bytes
    max_ms: float
    read_ms: float         # of which: reading the entries (one script)
    apply_ms: float        # of which: applying them to the table (the routes computed)
    encode_ms: float       # of which: encoding the changed routes
    scripts_s: float       # the copy scripts themselves, pipelined (untimed in the figure)
    load_s: float          # loading the table (position, then every model's copies and every pod)
    snapshot_ms: float     # encoding a snapshot of every route from the table
    setup_s: float
    hiredis: bool          # redis-py decodes replies with hiredis (C) rather than in pure Python


def route_publish_end_to_end(*, models: int, pods: int, changes: int, repeats: int, seed: int) -> PublishEndToEnd:
    """The real route path on a real Redis (MESHSERVE_REDIS_URL if set, with a private key
    prefix removed afterwards; else a private redis-server): `models` registered models
    with copies on `pods` pods, a route table loaded from it as the scheduler's route hub
    loads one. Each repeat applies the copy events of `route_publish` (odd repeats undo
    them) through the real copy scripts (`LiveState.reserve` + `settle` to add a copy,
    `release` to drop one), which append a route log entry as they change the copy
    (untimed: that is the placement's own work). Then timed: `routehub.catch_up`, the hub's
    step: read the entries, apply them to the table, encode the `RouteUpdate` bytes that
    every WatchRoutes stream is handed. The update is checked against the in-memory
    table of the same events."""
    return with_redis(
        lambda url, where: _end_to_end(url, where, models=models, pods=pods, changes=changes, repeats=repeats, seed=seed)
    )


def with_redis(run: Callable[[str, str], Coroutine[Any, Any, T]]) -> T:
    """`run(url, where)` on a real Redis: MESHSERVE_REDIS_URL if set (the caller removes its
    keys: `close_live`), else a private redis-server for the call."""
    import asyncio
    import os
    import tempfile
    from pathlib import Path

    from meshserve.cli import infra
    from meshserve.cli.procs import ProcessGroup

    with tempfile.TemporaryDirectory(prefix="meshserve-bench-redis-") as tmp:
        group = ProcessGroup(log_dir=Path(tmp) / "logs")
        try:
            url = os.environ.get("MESHSERVE_REDIS_URL")
            where = "MESHSERVE_REDIS_URL" if url else "private redis-server"
            url = url or infra.start_redis(group, Path(tmp) / "redis")
            return asyncio.run(run(url, where))
        finally:
            group.stop_all()



async def close_live(live: LiveState, where: str) -> None:
    """Close a bench's LiveState; on a shared server (MESHSERVE_REDIS_URL) first remove the
    keys under its private prefix."""
    if where == "MESHSERVE_REDIS_URL":
        keys = [k async for k in live.redis.scan_iter(match=f"{live.p}:*", count=10_000)]
        for lo in range(0, len(keys), 10_000):
            await live.redis.unlink(*keys[lo : lo + 10_000])
    await live.close()


_REPLACE_COPIES = """
local stamp = ARGV[1]
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  redis.call('DEL', ARGV[i])
  for j = 1, n do redis.call('HSET', ARGV[i], ARGV[i + 1 + j], stamp) end
  i = i + 2 + n
end
return 0
"""


async def _end_to_end(
    url: str, where: str, *, models: int, pods: int, changes: int, repeats: int, seed: int
) -> PublishEndToEnd:
    import uuid

    from redis.utils import HIREDIS_AVAILABLE

    from meshserve.scheduler.routing.hub import catch_up, load_table
    from meshserve.scheduler.routing.table import RouteTable
    from meshserve.scheduler.store.live import LiveState, now_ms

    endpoints, base, events = _publish_case(models=models, pods=pods, changes=changes, seed=seed)
    after = {n: set(p) for n, p in base.items()}
    touched = _apply(after, events)
    live = LiveState(url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    try:
        t0 = time.perf_counter()
        for pod_id, (_, grpc_address, rest_address) in endpoints.items():
            await live.upsert_pod(pod_id=pod_id, fields={
                "runtime": "mlserver-1.x", "labels": sorted(LABELS), "management_address": "127.0.0.1:1",
                "grpc_address": grpc_address, "rest_address": rest_address, "capacity": 1 << 60,
                "used": 0, "max_loading": 1 << 30, "default_size": 1_000_000, "heartbeat_ms": now_ms(), "started_ms": 0,
            })
        await live.sync_registry(model_ids=list(base), vmodels={})
        # the starting copies, written by a plain script (100,000 loads through the copy
        # scripts would only take longer): "loaded" copy entries, as the scripts leave them
        replace = live.redis.register_script(_REPLACE_COPIES)
        ids = list(base)
        for lo in range(0, len(ids), 20_000):
            args: list[str | int] = [f"loaded:{now_ms()}"]
            for m in ids[lo : lo + 20_000]:
                args += (live.k_copies(m), len(base[m]), *base[m])
            await replace(keys=[], args=args)
        setup_s = time.perf_counter() - t0
        # this harness's own tables (200,000 sets) out of the collector's way: a scheduler
        # process holds no such heap, and full collections walking it would be billed to the hub
        gc.collect()
        gc.freeze()

        t0 = time.perf_counter()
        table, position = await load_table(live.routes)
        load_s = time.perf_counter() - t0
        assert len(table.registered) == models
        t0 = time.perf_counter()
        first = table.snapshot(version=position.seq)
        snapshot_ms = (time.perf_counter() - t0) * 1000.0
        assert len(scheduler_pb2.RouteUpdate.FromString(first).routes) == models

        # where the time goes: the same three steps as catch_up, timed one by one on a copy
        spent: dict[str, list[float]] = {"read": [], "apply": [], "encode": []}
        current = {m: set(base[m]) for m in touched}
        wall: list[float] = []
        scripts: list[float] = []
        logged: list[int] = []
        changed_models: list[int] = []
        payload: bytes | None = b""
        for r in range(repeats):
            table_now = after if r % 2 == 0 else base
            t0 = time.perf_counter()
            async with live.redis.pipeline(transaction=False) as pipe:
                for m in touched:
                    for pod in sorted(table_now[m] - current[m]):
                        await live._reserve(keys=live._keys(m, pod), args=[m, pod, 10, now_ms(), "0"], client=pipe)
                        await live._settle(keys=live._keys(m, pod), args=[m, pod, 10, now_ms(), live.p], client=pipe)
                    for pod in sorted(current[m] - table_now[m]):
                        await live._release(**live._release_call(m, pod), client=pipe)
                    current[m] = set(table_now[m])
                replies = await pipe.execute()
            scripts.append(time.perf_counter() - t0)
            assert all(replies), "a copy script refused a change"
            logged.append((await live.routes.position()).seq - position.seq)
            # the breakdown, on a throw-away copy of the table (untimed copy)
            shadow = RouteTable(
                models=table.registered, loaded=[(m, p) for m, ps in table.copies.items() for p in ps],
                pods=table.pods.values(), vmodels=table.vmodels,
            )
            t1 = time.perf_counter()
            entries = await live.routes.read(position, most=100_000)
            t2 = time.perf_counter()
            shadow_changed = shadow.apply(entries.flat)
            t3 = time.perf_counter()
            shadow.changes(shadow_changed, version=entries.position.seq)
            t4 = time.perf_counter()
            for name, (lo, hi) in (("read", (t1, t2)), ("apply", (t2, t3)), ("encode", (t3, t4))):
                spent[name].append((hi - lo) * 1000.0)
            del shadow
            # the figure: the hub's own step
            t0 = time.perf_counter()
            new_position, payload, count = await catch_up(live.routes, table, position, most=100_000)
            wall.append((time.perf_counter() - t0) * 1000.0)
            assert new_position is not None and payload is not None and count == logged[-1]
            position = new_position
            update = scheduler_pb2.RouteUpdate.FromString(payload)
            got = {route.model_id: [e.pod_id for e in route.endpoints] for route in update.routes}
            changed = {m for m in touched if table_now[m] != (after if r % 2 else base)[m]}
            changed_models.append(len(changed))
            assert set(got) == changed, "the update does not hold exactly the changed models"
            assert got == {m: sorted(table_now[m]) for m in changed}, "routes differ from the table"
            assert all(
                (e.pod_id, e.grpc_address, e.rest_address) == endpoints[e.pod_id]
                for route in update.routes for e in route.endpoints
            )
        return PublishEndToEnd(
            int(statistics.median(changed_models)), int(statistics.median(logged)), models, pods, where,
            len(payload or b""), statistics.median(wall), max(wall),
            statistics.median(spent["read"]), statistics.median(spent["apply"]), statistics.median(spent["encode"]),
            statistics.median(scripts), load_s, snapshot_ms, setup_s, HIREDIS_AVAILABLE,
        )
    finally:
        gc.unfreeze()
        await close_live(live, where)
