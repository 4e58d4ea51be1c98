"""Decision latency of `place()` on a large cluster, and the cost of publishing routes."""

from __future__ import annotations

import gc
import random
import statistics
import time
from dataclasses import dataclass

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
from meshserve.scheduler.placement import ClusterIndex, place, place_indexed
from meshserve.scheduler.routes import build_route_updates

LABELS = frozenset({"rt:mlserver-1.x", "mt:sklearn", "pv:grpc-v2"})


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
    evict_cheapest_pod: bool = False,
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
        evict_cheapest_pod=evict_cheapest_pod,
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
    median_ms: float       # routes.build_route_updates + SerializeToString
    max_ms: float
    cpu_median_ms: float   # CPU time of the thread (less sensitive to other processes)
    baseline_median_ms: float      # the same messages built field by field (protobuf API)
    baseline_cpu_median_ms: float


def route_publish(*, models: int, pods: int, changes: int, batch: int, repeats: int, seed: int) -> Publish:
    """Apply `changes` copy events (load here / evict there) to a model->pods table, then
    build and serialise the `RouteUpdate` messages for every model whose route changed.
    Timed: computing the changed routes + building + serialising the protobufs, with
    `routes.build_route_updates` and, alternating, with the protobuf API as a baseline
    (`routes.add()` / `endpoints.add()` per route and endpoint). Both give the same bytes."""
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
    # `changes` events on distinct models: add a copy, or drop one (maybe the last)
    touched = rng.sample(names, changes)
    events = [(n, rng.choice(pod_ids), rng.random() < 0.5) for n in touched]

    def apply(table: dict[str, set[str]]) -> list[str]:
        changed: list[str] = []
        for model, pod, add in events:
            pods_of = table[model]
            if add:
                pods_of.add(pod)
            else:
                pods_of.pop()
            changed.append(model)
        return changed

    def fast(table: dict[str, set[str]], version: int) -> list[bytes]:
        changed = apply(table)
        routes = {m: [endpoints[p] for p in sorted(table[m])] for m in changed}
        return [u.SerializeToString() for u in build_route_updates(routes, batch=batch, version=version)]

    def baseline(table: dict[str, set[str]], version: int) -> list[bytes]:
        changed = apply(table)
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
            c0 = time.thread_time()
            t0 = time.perf_counter()
            out[name] = build(table, 1000 * r)
            runs[name].append((time.perf_counter() - t0) * 1000.0)
            cpu[name].append((time.thread_time() - c0) * 1000.0)
        assert out["fast"] == out["baseline"], "build_route_updates differs from the protobuf API"
    payloads = out["fast"]
    check = scheduler_pb2.RouteUpdate.FromString(payloads[0])
    assert len(check.routes) == min(batch, changes)
    return Publish(
        changes, len(payloads), sum(len(p) for p in payloads),
        statistics.median(runs["fast"]), max(runs["fast"]), statistics.median(cpu["fast"]),
        statistics.median(runs["baseline"]), statistics.median(cpu["baseline"]),
    )
