"""Placement's shared rules: what both searches (`scan.place`, the full scan, and
`index.place_indexed`, the indexed search) apply once they have candidate pods — which
copies are protected, the eviction orders of each policy, choosing the cheapest pod to
evict on and its victims, and the Plans (with their reasons) for every outcome. The rules
themselves are written out in `scan`'s docstring.

PURE: no asyncio, redis, grpc or sqlalchemy, no clock, no randomness, no state kept
between calls. May import: `meshserve.scheduler.models` only (in the pure-modules
contract).
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from meshserve.scheduler.models import (
    ALL_BUSY_LOADING,
    NO_COMPATIBLE_RUNTIME,
    NO_ROOM,
    TOO_BIG,
    CopyState,
    CopyView,
    Eviction,
    EvictionPolicy,
    PlacementConfig,
    PlacementRequest,
    Plan,
    PodView,
)

_DEFAULT_CONFIG = PlacementConfig()
_MAX_NAMED_VICTIMS = 3

# protection reasons, in the order they are checked and reported
_LOADING = "loading"
_IN_FLIGHT = "serving requests"
_RECENT = "loaded too recently"
_MIN_COPIES = "kept for minCopies"
_PROTECTIONS = (_LOADING, _IN_FLIGHT, _RECENT, _MIN_COPIES)


@dataclass(frozen=True)
class _Option:
    """Evicting `victims` on `pod` makes room; `key` ranks options (lower is better)."""

    key: tuple[float, int, int, int, str]   # worst victim, deficit, freed, loading, pod id
    pod: PodView
    victims: tuple[CopyView, ...]
    stale: int                              # how many victims had gone cold


def _evict_and_place(
    request: PlacementRequest,
    batches: Iterable[list[PodView]],
    *,
    census: _CopyCounts,
    now: float,
    cfg: PlacementConfig,
) -> Plan:
    """Among the first `eviction_candidates` pods that can free enough (smallest deficit
    first), evict on the one whose worst victim is cheapest.

    `batches` yields the eligible pods (every one of them exactly once) grouped by deficit,
    smallest first. Whole batches are tried until at least `cfg.eviction_candidates` pods
    can free enough (so ties never depend on input order); the options are ranked by worst
    victim's score, then deficit, bytes freed, loads in progress, pod id.
    """
    size = request.size_bytes
    policy = cfg.policy
    limit = cfg.eviction_candidates
    blocked = dict.fromkeys(_PROTECTIONS, 0)
    best: _Option | None = None
    tried = options = 0
    for batch in batches:
        for pod in batch:
            tried += 1
            deficit = size - pod.free_bytes
            found = _victims(pod, deficit, now=now, cfg=cfg, census=census, blocked=blocked)
            if found is None:
                continue
            victims, worst, stale = found
            options += 1
            freed = sum(c.size_bytes for c in victims)
            key = (worst, deficit, freed, pod.loading, pod.pod_id)
            if best is None or key < best.key:
                best = _Option(key, pod, tuple(victims), stale)
        if options >= limit:
            break
    if best is None:
        held = ", ".join(f"{n} {why}" for why, n in blocked.items() if n) or "none evictable"
        return Plan(
            None,
            reason=(
                f"no room for {size} bytes on any of {tried} compatible pods, "
                f"even after allowed evictions (protected copies: {held})"
            ),
            code=NO_ROOM,
        )
    pod = best.pod
    freed = best.key[2]
    left = pod.capacity_bytes - pod.allocated_bytes + freed - size
    names = ", ".join(c.model_id for c in best.victims[:_MAX_NAMED_VICTIMS])
    if len(best.victims) > _MAX_NAMED_VICTIMS:
        names += f", +{len(best.victims) - _MAX_NAMED_VICTIMS} more"
    n = len(best.victims)
    cold = f", {best.stale} gone cold" if best.stale else ""
    return Plan(
        pod.pod_id,
        evictions=tuple(Eviction(pod.pod_id, c.model_id, c.size_bytes) for c in best.victims),
        reason=(
            f"evicted {n} cop{'y' if n == 1 else 'ies'} ({policy.value}{cold}) on {pod.pod_id} "
            f"freeing {freed} bytes ({best.key[1]} needed; cheapest victims of "
            f"{options} candidate pod{'' if options == 1 else 's'}): {names}; {left} bytes left free"
        ),
    )


def _victims(
    pod: PodView,
    deficit: int,
    *,
    now: float,
    cfg: PlacementConfig,
    census: _CopyCounts,
    blocked: dict[str, int],
) -> tuple[list[CopyView], float, int] | None:
    """The cheapest evictable copies on `pod` freeing >= `deficit` bytes, the score of the
    worst of them (-inf when all are stale) and how many are stale; or None.

    Usage-weighted: copies that went stale (`CopyView.stale_at <= now`) come first, earliest
    first; then `pod.victim_order` (cheapest first). Protected copies are skipped; the walk
    stops as soon as enough is freed.
    """
    victims: list[CopyView] = []
    freed = stale = 0
    for copy, cold in _eviction_order(pod, now=now, cfg=cfg):
        why = _protection(copy, now=now, cfg=cfg, census=census)
        if why is not None:
            blocked[why] += 1
            continue
        victims.append(copy)
        freed += copy.size_bytes
        stale += cold
        if freed >= deficit:
            # each part of the order is ascending, so the last copy taken is the worst
            if cold:
                return victims, -math.inf, stale
            worst = copy.last_used if cfg.policy is EvictionPolicy.LRU else copy.usage_score(cfg.usage_half_life_seconds)
            return victims, worst, stale
    return None


def _eviction_order(pod: PodView, *, now: float, cfg: PlacementConfig) -> Iterator[tuple[CopyView, bool]]:
    """`pod`'s copies, cheapest to evict first, each with whether it has gone cold: the
    stale ones first (usage-weighted), earliest first; then `pod.victim_order` without them."""
    half_life = cfg.usage_half_life_seconds
    cold: frozenset[str] = frozenset()
    if cfg.policy is EvictionPolicy.USAGE_WEIGHTED and cfg.stale_after_intervals > 0:
        order, times = pod.stale_order(half_life, cfg.stale_after_intervals, cfg.stale_min_seconds)
        stale = order[: bisect.bisect_right(times, now)]
        for copy in stale:
            yield copy, True
        cold = frozenset(c.model_id for c in stale)
    for copy in pod.victim_order(cfg.policy, half_life=half_life):
        if copy.model_id not in cold:
            yield copy, False


def _protection(
    copy: CopyView,
    *,
    now: float,
    cfg: PlacementConfig,
    census: _CopyCounts,
) -> str | None:
    """Why `copy` must not be evicted, or None when it may be."""
    if copy.state is CopyState.LOADING:
        return _LOADING
    if copy.in_flight > 0:
        return _IN_FLIGHT
    if now - copy.loaded_at < cfg.min_residency_seconds:
        return _RECENT
    floor = cfg.min_copies.get(copy.model_id, 0)
    if floor >= 1 and census.loaded_copies(copy.model_id) <= floor:
        return _MIN_COPIES
    return None


class _CopyCounts(Protocol):
    def loaded_copies(self, model_id: str) -> int: ...


class _Census:
    """Loaded copies per model on usable pods, counted lazily for one `place()` call.

    Only victims whose model has min_copies >= 1 are counted. The per-pod model sets are
    gathered on the first count, then each count is one C-level pass over them.
    """

    def __init__(self, pods: Sequence[PodView]) -> None:
        self._pods = pods
        self._sets: list[frozenset[str]] | None = None
        self._counts: dict[str, int] = {}

    def loaded_copies(self, model_id: str) -> int:
        n = self._counts.get(model_id)
        if n is None:
            if self._sets is None:
                self._sets = [p.loaded_model_ids for p in self._pods if p.healthy and not p.draining]
            sets = self._sets
            n = sum(map(operator.contains, sets, itertools.repeat(model_id, len(sets))))
            self._counts[model_id] = n
        return n


def _labels(request: PlacementRequest) -> str:
    return ", ".join(sorted(request.required_labels)) or "any model"


def is_protected(
    copy: CopyView, *, now: float, config: PlacementConfig, pods: Sequence[PodView]
) -> bool:
    """True when `place()` would never evict `copy` (for callers and tests)."""
    return _protection(copy, now=now, cfg=config, census=_Census(pods)) is not None


def age_hits(*, hits: float, last_used: float, now: float, new: float, half_life: float) -> float:
    """The aged request count to store as `CopyView.hits` when `new` requests arrive at `now`.

    `hits` was the count as of `last_used`; it decays by 2^(-(now - last_used)/half_life)
    before the new requests are added (an exponentially weighted count, as the
    usage-weighted policy assumes). Pure; the service calls it when it records usage.
    """
    elapsed = max(0.0, now - last_used)
    return hits * math.pow(2.0, -elapsed / half_life) + new


def _no_compatible_pod(request: PlacementRequest) -> Plan:
    return Plan(None, reason=f"no healthy pod supports {_labels(request)}", code=NO_COMPATIBLE_RUNTIME)


def _too_big(size: int, max_capacity: int) -> Plan:
    return Plan(
        None,
        reason=f"model needs {size} bytes but the largest compatible pod has a capacity of {max_capacity} bytes",
        code=TOO_BIG,
    )


def _all_hold_a_copy(n_compatible: int, model: str) -> Plan:
    return Plan(
        None,
        reason=f"all {n_compatible} compatible pods already hold a copy of {model} or are in failure back-off",
        code=NO_ROOM,
    )


def _big_ones_hold_a_copy(size: int, model: str) -> Plan:
    return Plan(
        None,
        reason=(
            f"the compatible pods with {size} bytes of capacity already hold a copy "
            f"of {model} or are in failure back-off"
        ),
        code=NO_ROOM,
    )


def _best_fit(pod_id: str, left: int) -> Plan:
    return Plan(pod_id, reason=f"best fit: {left} bytes left free on {pod_id}")


def _all_busy(size: int) -> Plan:
    return Plan(
        None,
        reason=f"every compatible pod that could take {size} bytes is busy loading (max loads in progress)",
        code=ALL_BUSY_LOADING,
    )
