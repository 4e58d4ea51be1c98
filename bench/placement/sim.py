"""Replay a trace through the real `place()` (LRU, usage-weighted) and through Belady.

The simulated cluster is `pods` equal pods whose capacities add up to a fraction of the
bytes of all models. Every request needs its model loaded: a hit when some pod holds a
copy, otherwise a load (a miss) placed by `place()`, evicting what the plan says. One
copy per model (no scaling), no load failures, loads complete at once; protections are
off (`min_residency_seconds=0`, nothing in flight) so every policy gets the same room.
Usage is counted the way the service should: an aged count per model, kept across
evictions (`placement.age_hits`), passed as `CopyView.hits`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from bench.placement.traces import Phase
from meshserve.scheduler.models import (
    CopyView,
    EvictionPolicy,
    PlacementConfig,
    PlacementRequest,
    PodView,
)
from meshserve.scheduler.placement.scan import age_hits, place
from meshserve.scheduler.shift import ShiftConfig, ShiftDetector

_SHIFT = ShiftConfig()
REQUEST_INTERVAL = 0.03
"""Simulated seconds between requests (33 req/s): the default 1,000 s half-life of
usage-weighted aging is then 33,000 requests, 3.3 times the number of models."""


@dataclass(frozen=True)
class Result:
    requests: int          # counted (after warm-up)
    hits: int
    loads: int

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def loads_per_1000(self) -> float:
        return 1000.0 * self.loads / self.requests if self.requests else 0.0


def pod_capacities(sizes: npt.NDArray[np.int64], *, fraction: float, pods: int) -> list[int]:
    """`pods` equal capacities adding up to `fraction` of all model bytes."""
    cap = int(int(sizes.sum()) * fraction) // pods
    if cap < int(sizes.max()):
        raise ValueError("a pod is smaller than the largest model; use fewer pods")
    return [cap] * pods


def simulate_place(
    requests: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.int64],
    *,
    capacities: list[int],
    policy: EvictionPolicy,
    warmup: int,
    eviction_candidates: int = PlacementConfig.eviction_candidates,
    stale_after_intervals: float = PlacementConfig.stale_after_intervals,
    shift: ShiftConfig | None = _SHIFT,
) -> Result:
    """Replay `requests` (model indexes) through `place()`; count after `warmup` requests.

    Usage-weighted only, as the scheduler's leader does (`shift`, None = off): every
    simulated second the request and load counters go to a `shift.ShiftDetector`, and
    every usage count is forgotten when it reports that the popular set moved."""
    config = PlacementConfig(
        policy=policy, min_residency_seconds=0.0, eviction_candidates=eviction_candidates,
        stale_after_intervals=stale_after_intervals,
    )
    half_life = config.usage_half_life_seconds
    names = [f"m{i:05d}" for i in range(len(sizes))]
    size_of = [int(s) for s in sizes]
    n_pods = len(capacities)
    pod_ids = [f"pod-{j:02d}" for j in range(n_pods)]
    index_of = {p: j for j, p in enumerate(pod_ids)}
    copies: list[dict[str, CopyView]] = [{} for _ in range(n_pods)]
    alloc = [0] * n_pods
    views: list[PodView | None] = [None] * n_pods     # None: must be rebuilt
    last: list[PodView | None] = [None] * n_pods      # last view built per pod
    reshaped = [True] * n_pods    # copies added/removed since `last` was built
    where: dict[int, int] = {}
    seen = [0.0] * len(sizes)
    usage = [0.0] * len(sizes)    # aged request count per model, as of `seen`
    hits = loads = counted = 0
    detector = ShiftDetector(shift) if shift is not None and policy is EvictionPolicy.USAGE_WEIGHTED else None
    tick = round(1.0 / REQUEST_INTERVAL)   # requests per simulated second: the leader's tick
    misses = 0
    for i, m in enumerate(requests.tolist()):
        t = i * REQUEST_INTERVAL
        if detector is not None and i % tick == 0 and detector.observe(now=t, requests=i, loads=misses):
            usage = [0.0] * len(sizes)
            for j in range(n_pods):
                copies[j] = {k: replace(c, hits=0.0) for k, c in copies[j].items()}
                views[j], reshaped[j] = None, True
        usage[m] = age_hits(hits=usage[m], last_used=seen[m], now=t, new=1.0, half_life=half_life)
        seen[m] = t
        name = names[m]
        j = where.get(m)
        if j is not None:
            c = copies[j][name]
            copies[j][name] = CopyView(name, c.size_bytes, last_used=t, hits=usage[m], loaded_at=c.loaded_at)
            views[j] = None
            if i >= warmup:
                hits += 1
                counted += 1
            continue
        built: list[PodView] = []
        for k in range(n_pods):
            v = views[k]
            if v is None:
                prev = last[k]
                if prev is None or reshaped[k]:
                    v = PodView(pod_ids[k], capacities[k], alloc[k], copies=tuple(copies[k].values()))
                else:  # only usage changed: keep the model index, as an incremental view does
                    v = prev.with_usage(tuple(copies[k].values()), allocated_bytes=alloc[k])
                views[k] = last[k] = v
                reshaped[k] = False
            built.append(v)
        plan = place(PlacementRequest(name, size_of[m]), built, now=t, config=config)
        if plan.pod_id is None:
            raise RuntimeError(f"placement failed in the simulation: {plan.reason}")
        j = index_of[plan.pod_id]
        for ev in plan.evictions:
            del copies[j][ev.model_id]
            del where[int(ev.model_id[1:])]
            alloc[j] -= ev.size_bytes
        copies[j][name] = CopyView(name, size_of[m], last_used=t, hits=usage[m], loaded_at=t)
        alloc[j] += size_of[m]
        if alloc[j] > capacities[j]:
            raise AssertionError(f"{plan.pod_id} over capacity after {plan}")
        where[m] = j
        views[j] = None
        reshaped[j] = True
        misses += 1
        if i >= warmup:
            loads += 1
            counted += 1
    return Result(counted, hits, loads)


def online_bound(phases: Sequence[Phase], sizes: npt.NDArray[np.int64], *, capacity: int, warmup: int) -> float:
    """An upper bound on the hit ratio of ANY online policy (one that does not see the future)
    replaying a trace drawn from `phases`, counted after `warmup` requests.

    Each request is an independent draw from its phase's `probs`, so it is a hit with
    probability `sum(probs[m] for m in the cache)`, whatever the policy did before: the
    cache content is a function of the requests so far. No cache of `capacity` bytes holds
    more probability than the fractional knapsack (models by probability per byte, the last
    one cut to fit), and the bound even grants that the policy knows each phase's
    probabilities from its first request. The realised hit ratio of a trace differs from
    its expectation by a few hundredths of a point (e.g. std 0.06 points at 0.95 over
    135,000 requests). Belady sees the future, so it may exceed this bound.
    """
    weighted = 0.0
    counted = 0
    for phase in phases:
        n = phase.end - max(phase.start, warmup)
        if n <= 0:
            continue
        counted += n
        weighted += n * _knapsack(phase.probs, sizes.astype(np.float64), float(capacity))
    return weighted / counted if counted else 0.0


def _knapsack(value: npt.NDArray[np.float64], size: npt.NDArray[np.float64], capacity: float) -> float:
    """The fractional knapsack's optimum: the most `value` that `capacity` bytes can hold."""
    order = np.argsort(-(value / size), kind="stable")
    total = np.cumsum(size[order])
    whole = int(np.searchsorted(total, capacity, side="right"))
    best = float(value[order[:whole]].sum())
    if whole < len(order):
        room = capacity - (float(total[whole - 1]) if whole else 0.0)
        best += float(value[order[whole]]) * room / float(size[order[whole]])
    return best


def next_uses(requests: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """For each request position, the position of the next request for the same model."""
    length = len(requests)
    nxt = np.full(length, length * 4, dtype=np.int64)   # "never": far beyond the end
    order = np.lexsort((np.arange(length), requests))   # by model, then position
    same = requests[order[1:]] == requests[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def simulate_belady(
    requests: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.int64],
    *,
    capacity: int,
    warmup: int,
    size_aware: bool,
) -> Result:
    """Offline reference on ONE cache of `capacity` bytes (no per-pod fragmentation).

    Every miss loads the model (a request cannot be served otherwise, so no bypass), then
    evicts other models until it fits: the farthest next use first (`size_aware=False`,
    classic Belady/MIN applied to sizes), or the largest `distance to next use x size`
    first (`size_aware=True`, the "Belady-Size" heuristic). With variable sizes the exact
    optimum is NP-hard: these are the standard reference heuristics, not proven bounds.
    """
    nxt = next_uses(requests)
    slots = 1 << 14
    slot_next = np.zeros(slots, dtype=np.float64)
    slot_size = np.zeros(slots, dtype=np.float64)
    slot_valid = np.zeros(slots, dtype=bool)
    slot_model = np.full(slots, -1, dtype=np.int64)
    free_slots = list(range(slots - 1, -1, -1))
    slot_of: dict[int, int] = {}
    used = 0
    hits = loads = counted = 0
    size_list = sizes.tolist()
    nxt_list = nxt.tolist()
    for i, m in enumerate(requests.tolist()):
        s = slot_of.get(m)
        if s is not None:
            slot_next[s] = nxt_list[i]
            if i >= warmup:
                hits += 1
                counted += 1
            continue
        size = size_list[m]
        while used + size > capacity:
            score = (slot_next - i) * slot_size if size_aware else slot_next.copy()
            score[~slot_valid] = -1.0
            v = int(np.argmax(score))
            slot_valid[v] = False
            used -= int(slot_size[v])
            del slot_of[int(slot_model[v])]
            free_slots.append(v)
        s = free_slots.pop()    # 16k slots > models that fit in any capacity used here
        slot_next[s] = nxt_list[i]
        slot_size[s] = size
        slot_valid[s] = True
        slot_model[s] = m
        slot_of[m] = s
        used += size
        if i >= warmup:
            loads += 1
            counted += 1
    return Result(counted, hits, loads)
