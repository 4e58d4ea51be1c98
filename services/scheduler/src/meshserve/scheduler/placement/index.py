"""The indexed fast path of placement: `ClusterIndex` and `place_indexed()`.

PURE, like `placement`: no I/O, no clock, no randomness. A long-lived caller keeps a
`ClusterIndex` of every pod's latest view and asks `place_indexed()`, which returns
exactly the Plan `placement.place()` returns for the same views (same rules, same
reasons; checked by hypothesis tests) without a pass over every pod: a bisection per
label group for the best fit, and for eviction a walk from the most free bytes down
that stops once enough candidate pods can free room. The eviction rules themselves
(`_evict_and_place`, protections, victim orders) are shared with `placement.scan` (`placement.rules`).

May import: `meshserve.scheduler.models` and `placement.rules` (pure; in the pure-modules
contract).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import operator
from collections.abc import Iterable, Iterator
from typing import Any

from meshserve.scheduler.models import (
    EvictionPolicy,
    PlacementConfig,
    PlacementRequest,
    Plan,
    PodView,
)
from meshserve.scheduler.placement.rules import (
    _DEFAULT_CONFIG,
    _all_busy,
    _all_hold_a_copy,
    _best_fit,
    _big_ones_hold_a_copy,
    _evict_and_place,
    _no_compatible_pod,
    _too_big,
)


class _Group:
    """The usable pods with one label set: capacities, and the pods that may start a load
    (`loading < max_loading`) sorted by (free bytes, loads in progress, pod id)."""

    __slots__ = ("caps", "labels", "ready")

    def __init__(self, labels: frozenset[str]) -> None:
        self.labels = labels
        self.caps: list[int] = []
        self.ready: list[tuple[int, int, str]] = []


def _ready_key(pod: PodView) -> tuple[int, int, str] | None:
    if pod.loading >= pod.max_loading:
        return None
    return (pod.capacity_bytes - pod.allocated_bytes, pod.loading, pod.pod_id)


def _remove_sorted(values: list[Any], value: Any) -> None:
    i = bisect.bisect_left(values, value)
    if i == len(values) or values[i] != value:
        raise AssertionError(f"index out of step: {value!r} is missing")
    del values[i]


class ClusterIndex:
    """Every pod's latest view, indexed so `place_indexed()` decides in O(log pods + victims).

    A long-lived caller (the leader's in-memory cluster view, the benchmark) builds it once
    and calls `update(view)` / `remove(pod_id)` whenever a pod's view changes (typically
    after applying a Plan: the chosen pod gets a new view). Each update costs
    O(log pods + copies changed) plus a list insertion (memmove) per sorted list.

    Kept per label set (`_Group`): the usable pods' capacities (sorted) and the pods that
    may start a load, sorted by free bytes. Kept for the whole cluster: which usable pods
    hold a copy of each model (any state), and how many loaded copies each model has on
    usable pods (minCopies protection). Unusable pods (unhealthy or draining) are stored
    but not indexed, exactly as `place()` skips them.

    `warm`: the config decisions will use. When given, `update()` also sorts the new
    view's victim order for that policy (`PodView.victim_order`, cached on the view), so a
    decision that evicts on a pod changed since the last one does not pay the sort.

    Mutable and owned by one caller; not thread-safe. Pod ids must be unique (a second
    view with the same id replaces the first). `place_indexed(r, index, ...)` returns the
    same Plan as `place(r, index.views(), ...)` (tested by hypothesis, including after
    incremental updates).
    """

    def __init__(self, pods: Iterable[PodView] = (), *, warm: PlacementConfig | None = None) -> None:
        self._warm = warm
        self._pods: dict[str, PodView] = {}
        self._groups: dict[frozenset[str], _Group] = {}
        self._compatible: dict[frozenset[str], tuple[_Group, ...]] = {}
        self._holders: dict[str, set[str]] = {}
        self._loaded: dict[str, int] = {}
        for pod in pods:
            self.update(pod)

    def __len__(self) -> int:
        return len(self._pods)

    def __contains__(self, pod_id: object) -> bool:
        return pod_id in self._pods

    def get(self, pod_id: str) -> PodView | None:
        return self._pods.get(pod_id)

    def views(self) -> list[PodView]:
        """Every pod's current view (for `place()`, the reference)."""
        return list(self._pods.values())

    def loaded_copies(self, model_id: str) -> int:
        """Loaded copies of `model_id` on usable pods (what minCopies protection counts)."""
        return self._loaded.get(model_id, 0)

    def holders(self, model_id: str) -> frozenset[str]:
        """Usable pods holding a copy of `model_id` (loading or loaded)."""
        return frozenset(self._holders.get(model_id, ()))

    def update(self, pod: PodView) -> None:
        """Add `pod`, or replace the view with its id."""
        old = self._pods.get(pod.pod_id)
        self._pods[pod.pod_id] = pod
        old_usable = old is not None and old.usable
        new_usable = pod.usable
        if old is not None and old_usable:
            self._unplace(old)
        if new_usable:
            self._place(pod)
            warm = self._warm
            if warm is not None:
                pod.victim_order(warm.policy, half_life=warm.usage_half_life_seconds)
                if warm.policy is EvictionPolicy.USAGE_WEIGHTED and warm.stale_after_intervals > 0:
                    pod.stale_order(warm.usage_half_life_seconds, warm.stale_after_intervals, warm.stale_min_seconds)
        old_ids = old.model_ids if old is not None and old_usable else frozenset()
        old_loaded = old.loaded_model_ids if old is not None and old_usable else frozenset()
        new_ids = pod.model_ids if new_usable else frozenset()
        new_loaded = pod.loaded_model_ids if new_usable else frozenset()
        if old_ids is not new_ids:
            self._count_holders(old_ids, new_ids, pod.pod_id)
        if old_loaded is not new_loaded:
            self._count_loaded(old_loaded, new_loaded)

    def remove(self, pod_id: str) -> None:
        """Forget a pod (no-op when unknown)."""
        old = self._pods.pop(pod_id, None)
        if old is None or not old.usable:
            return
        self._unplace(old)
        self._count_holders(old.model_ids, frozenset(), pod_id)
        self._count_loaded(old.loaded_model_ids, frozenset())

    def _place(self, pod: PodView) -> None:
        group = self._groups.get(pod.labels)
        if group is None:
            group = self._groups[pod.labels] = _Group(pod.labels)
            self._compatible.clear()
        bisect.insort(group.caps, pod.capacity_bytes)
        key = _ready_key(pod)
        if key is not None:
            bisect.insort(group.ready, key)

    def _unplace(self, pod: PodView) -> None:
        group = self._groups[pod.labels]
        _remove_sorted(group.caps, pod.capacity_bytes)
        key = _ready_key(pod)
        if key is not None:
            _remove_sorted(group.ready, key)

    def _count_holders(self, old: frozenset[str], new: frozenset[str], pod_id: str) -> None:
        holders = self._holders
        for model in old - new:
            pods = holders[model]
            pods.discard(pod_id)
            if not pods:
                del holders[model]
        for model in new - old:
            pods_of = holders.get(model)
            if pods_of is None:
                holders[model] = {pod_id}
            else:
                pods_of.add(pod_id)

    def _count_loaded(self, old: frozenset[str], new: frozenset[str]) -> None:
        loaded = self._loaded
        for model in old - new:
            n = loaded[model] - 1
            if n:
                loaded[model] = n
            else:
                del loaded[model]
        for model in new - old:
            loaded[model] = loaded.get(model, 0) + 1

    def _groups_for(self, labels: frozenset[str]) -> tuple[_Group, ...]:
        groups = self._compatible.get(labels)
        if groups is None:
            groups = tuple(g for g in self._groups.values() if labels <= g.labels)
            self._compatible[labels] = groups
        return groups

    def _eligible_desc(
        self, group: _Group, model: str, exclude: frozenset[str], size: int
    ) -> Iterator[PodView]:
        """The group's eligible pods, most free bytes first (equal free bytes: any order)."""
        pods = self._pods
        ready = group.ready
        for i in range(len(ready) - 1, -1, -1):
            pod = pods[ready[i][2]]
            if pod.capacity_bytes < size or model in pod.model_ids or pod.pod_id in exclude:
                continue
            yield pod


def place_indexed(
    request: PlacementRequest,
    index: ClusterIndex,
    *,
    now: float,
    config: PlacementConfig | None = None,
) -> Plan:
    """`place(request, index.views(), now=now, config=config)`, without a pass over the pods.

    Same rules, same Plan (reasons included). Cost: a bisection per label group for the
    best fit; when eviction is needed, the eligible pods are walked from the most free
    bytes down, one deficit at a time, only until some pod can free enough (as in
    `place()`); minCopies counts come from the index. Failure plans that must count every
    eligible pod (NO_ROOM after trying evictions everywhere) still walk them all.
    """
    cfg = config if config is not None else _DEFAULT_CONFIG
    size = request.size_bytes
    labels = request.required_labels
    model = request.model_id
    exclude = request.exclude_pods
    groups = [g for g in index._groups_for(labels) if g.caps]
    n_compatible = sum(len(g.caps) for g in groups)
    if n_compatible == 0:
        return _no_compatible_pod(request)
    max_capacity = max(g.caps[-1] for g in groups)
    if size > max_capacity:
        return _too_big(size, max_capacity)
    pods = index._pods
    best_key: tuple[int, int, str] | None = None
    for g in groups:
        ready = g.ready
        for i in range(bisect.bisect_left(ready, (size,)), len(ready)):
            key = ready[i]
            if best_key is not None and key >= best_key:
                break
            pod = pods[key[2]]
            if pod.capacity_bytes < size or model in pod.model_ids or key[2] in exclude:
                continue
            best_key = key
            break
    if best_key is not None:
        return _best_fit(best_key[2], best_key[0] - size)
    # No best fit: count what place() counts, from the model's holders and the exclusions.
    skipped = [
        p
        for p in map(pods.get, index._holders.get(model, set()) | exclude)
        if p is not None and p.usable and labels <= p.labels
    ]
    if len(skipped) == n_compatible:
        return _all_hold_a_copy(n_compatible, model)
    big_enough = sum(len(g.caps) - bisect.bisect_left(g.caps, size) for g in groups)
    if big_enough == sum(p.capacity_bytes >= size for p in skipped):
        return _big_ones_hold_a_copy(size, model)
    walks = [index._eligible_desc(g, model, exclude, size) for g in groups]
    eligible = walks[0] if len(walks) == 1 else heapq.merge(*walks, key=_FREE, reverse=True)
    batches = _equal_free_batches(eligible)
    first = next(batches, None)
    if first is None:
        return _all_busy(size)
    return _evict_and_place(
        request, itertools.chain((first,), batches), census=index, now=now, cfg=cfg
    )


_FREE = operator.attrgetter("free_bytes")


def _equal_free_batches(pods: Iterable[PodView]) -> Iterator[list[PodView]]:
    """Consecutive pods with equal free bytes, as lists (`pods` sorted by free bytes)."""
    batch: list[PodView] = []
    for pod in pods:
        if batch and pod.free_bytes != batch[0].free_bytes:
            yield batch
            batch = []
        batch.append(pod)
    if batch:
        yield batch
