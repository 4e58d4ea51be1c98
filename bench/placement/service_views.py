"""What the scheduler service reads from Redis before a placement decision, on a large
cluster: every pod's view per decision (the baseline: what the service did before it kept
views) against `views.ClusterViews`, which reads each pod's view version and then only
the pods that changed."""

from __future__ import annotations

import random
import statistics
import time
import uuid
from dataclasses import dataclass

from bench.placement.latency import LABELS, close_live, with_redis
from meshserve.scheduler.models import PlacementConfig, PlacementRequest
from meshserve.scheduler.placement.index import place_indexed
from meshserve.scheduler.placement.views import ClusterViews, pod_views
from meshserve.scheduler.store.live import LiveState, now_ms

# a pod's copies, written directly (loads through the copy scripts would only take longer):
# allocations, "loaded" copy entries and usage, as the scripts and usage reports leave them
_FILL = """
local P, pod, n, size = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, n do
  local m = pod .. '-m' .. i
  redis.call('HSET', P .. ':alloc:' .. pod, m, size)
  redis.call('HSET', P .. ':copies:' .. m, pod, 'loaded:1')
  redis.call('HSET', P .. ':usage:' .. m, 'hits', tostring(i), 'last_used_ms', '1000')
end
redis.call('HSET', P .. ':pod:' .. pod, 'allocated', n * size)
return 1
"""


@dataclass(frozen=True)
class ServiceViews:
    pods: int
    copies: int
    redis: str
    read_all_ms: float        # baseline: every pod's info and view, as each decision read them before
    first_ms: float           # ClusterViews.refresh() the first time (reads every view)
    unchanged_ms: float       # refresh() when no pod changed (view versions only)
    one_changed_ms: float     # refresh() after one pod's copy changed (versions + that pod)
    decide_ms: float          # place_indexed() on the held index, after such a refresh


def service_views(*, pods: int, copies_per_pod: int, repeats: int, seed: int) -> ServiceViews:
    return with_redis(lambda url, where: _run(url, where, pods, copies_per_pod, repeats, seed))


async def _run(url: str, where: str, n_pods: int, per_pod: int, repeats: int, seed: int) -> ServiceViews:
    live = LiveState(url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    rng = random.Random(seed)
    size = 1_000_000
    try:
        fill = live.redis.register_script(_FILL)
        pod_ids = [f"mlserver-{j:04d}" for j in range(n_pods)]
        for pod in pod_ids:
            await live.upsert_pod(pod_id=pod, fields={
                "runtime": "mlserver-1.x", "labels": sorted(LABELS), "management_address": "127.0.0.1:1",
                "grpc_address": "127.0.0.1:2", "rest_address": "127.0.0.1:3",
                "capacity": size * per_pod + rng.randrange(size),   # full to within 1 MB, not all alike
                "used": 0, "max_loading": 4, "default_size": size, "heartbeat_ms": now_ms(), "started_ms": 0,
            })
            await fill(keys=[], args=[live.p, pod, per_pod, size])

        read_all: list[float] = []
        for _ in range(3):
            t0 = time.perf_counter()
            infos = await live.pods()
            pod_views(await live.placement_snapshot(p.pod_id for p in infos))
            read_all.append((time.perf_counter() - t0) * 1000.0)

        views = ClusterViews(live, pod_timeout_seconds=3_600, warm=PlacementConfig())
        t0 = time.perf_counter()
        await views.refresh()
        first = (time.perf_counter() - t0) * 1000.0
        assert len(views.index) == n_pods

        unchanged: list[float] = []
        one: list[float] = []
        decide: list[float] = []
        request = PlacementRequest(model_id="new", size_bytes=size * 2, required_labels=LABELS)
        for r in range(repeats):
            t0 = time.perf_counter()
            await views.refresh()
            unchanged.append((time.perf_counter() - t0) * 1000.0)
            pod = rng.choice(pod_ids)
            assert (await live.reserve(model_id=f"extra-{r}", pod_id=pod, size=1, exclusive=False))[0]
            t0 = time.perf_counter()
            await views.refresh()
            one.append((time.perf_counter() - t0) * 1000.0)
            view = views.index.get(pod)
            assert view is not None and f"extra-{r}" in view.model_ids
            t0 = time.perf_counter()
            plan = place_indexed(request, views.index, now=time.time(), config=PlacementConfig())
            decide.append((time.perf_counter() - t0) * 1000.0)
            assert plan.evictions   # every pod is full to within 1 MB: the decision evicts
        return ServiceViews(
            n_pods, n_pods * per_pod, where, statistics.median(read_all), first,
            statistics.median(unchanged), statistics.median(one), statistics.median(decide),
        )
    finally:
        await close_live(live, where)
