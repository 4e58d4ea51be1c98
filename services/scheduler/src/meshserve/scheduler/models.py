"""Domain values shared by placement, scaling, the store and the service: frozen, no I/O.

Everything here is an immutable value. `PodView` lazily caches a few derived indexes
(`model_ids`, `loaded_model_ids`, `victim_order(...)`) in its instance dict; they are pure
functions of its fields, so a view reused across `place()` calls (the benchmark does this,
and an incremental in-memory view in the service can) pays for them once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from functools import cached_property
from operator import attrgetter
from typing import NewType

ModelId = NewType("ModelId", str)
PodId = NewType("PodId", str)

_MODEL_ID = attrgetter("model_id")
_LRU_KEY = attrgetter("last_used", "model_id")
_GDSF_KEY = attrgetter("priority", "last_used", "model_id")

MIB = 1 << 20
"""GDSF priorities measure size in MiB so `hits x load_cost / size` is a readable number."""


class CopyState(str, enum.Enum):  # noqa: UP042 (keep str() and format() as they were)
    LOADING = "loading"
    LOADED = "loaded"


class EvictionPolicy(str, enum.Enum):  # noqa: UP042
    LRU = "lru"
    USAGE_WEIGHTED = "usage-weighted"


@dataclass(frozen=True)
class CopyView:
    """One copy of a model on one pod, as placement sees it."""

    model_id: str
    size_bytes: int
    state: CopyState = CopyState.LOADED
    last_used: float = 0.0          # seconds (any epoch, same clock as `now`)
    hits: float = 0.0               # requests counted for this model (the service may age them)
    in_flight: int = 0              # requests being served right now
    loaded_at: float = 0.0
    load_cost: float = 1.0          # seconds the load took (or an estimate)
    gdsf_clock: float = 0.0
    """The GDSF clock (`PlacementConfig.gdsf_clock`) in effect when this copy was last used
    or loaded. The service stores it with the usage counters; 0.0 turns usage-weighted
    eviction into plain frequency-per-byte."""

    @cached_property
    def priority(self) -> float:
        """GreedyDual-Size-Frequency priority: `gdsf_clock + hits x load_cost / size_MiB`."""
        size_mib = max(self.size_bytes, 1) / MIB
        return self.gdsf_clock + self.hits * self.load_cost / size_mib


@dataclass(frozen=True)
class PodView:
    """A runtime pod's memory and load state."""

    pod_id: str
    capacity_bytes: int
    allocated_bytes: int            # bytes reserved or held by copies on this pod
    labels: frozenset[str] = frozenset()
    loading: int = 0                # loads in progress
    max_loading: int = 1
    healthy: bool = True
    draining: bool = False
    copies: tuple[CopyView, ...] = ()

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.allocated_bytes

    @property
    def usable(self) -> bool:
        """Healthy and not draining: may receive copies and its copies serve requests."""
        return self.healthy and not self.draining

    @cached_property
    def model_ids(self) -> frozenset[str]:
        """Every model with a copy (loading or loaded) on this pod."""
        return frozenset(map(_MODEL_ID, self.copies))

    @cached_property
    def loaded_model_ids(self) -> frozenset[str]:
        """Models whose copy on this pod is loaded (can serve)."""
        return frozenset(c.model_id for c in self.copies if c.state is CopyState.LOADED)

    def with_usage(self, copies: tuple[CopyView, ...], *, allocated_bytes: int) -> PodView:
        """This pod with fresh views of the SAME models' copies (usage or state changed).

        For incremental in-memory views: the model index is carried over instead of being
        rebuilt, so `copies` must name exactly the models of `self.copies`.
        """
        if len(copies) != len(self.copies):
            raise ValueError("with_usage() needs the same models; build a new PodView instead")
        view = replace(self, copies=copies, allocated_bytes=allocated_bytes)
        if "model_ids" in self.__dict__:
            view.__dict__["model_ids"] = self.__dict__["model_ids"]
        return view

    def cheapest_victim(self, policy: EvictionPolicy) -> CopyView | None:
        """The first copy of `victim_order(policy)`, without sorting when not cached."""
        cache: dict[EvictionPolicy, tuple[CopyView, ...]] | None = self.__dict__.get(
            "_victim_order"
        )
        order = cache.get(policy) if cache is not None else None
        if order is not None:
            return order[0] if order else None
        if not self.copies:
            return None
        return min(self.copies, key=_LRU_KEY if policy is EvictionPolicy.LRU else _GDSF_KEY)

    def victim_order(self, policy: EvictionPolicy) -> tuple[CopyView, ...]:
        """This pod's copies, cheapest to evict first under `policy` (ties: model id).

        LRU orders by `last_used`; usage-weighted by `CopyView.priority` then `last_used`.
        Cached per policy: the order depends only on the copies, never on `now`.
        """
        cache: dict[EvictionPolicy, tuple[CopyView, ...]] = self.__dict__.setdefault(
            "_victim_order", {}
        )
        order = cache.get(policy)
        if order is None:
            if policy is EvictionPolicy.LRU:
                order = tuple(sorted(self.copies, key=_LRU_KEY))
            else:
                order = tuple(sorted(self.copies, key=_GDSF_KEY))
            cache[policy] = order
        return order


@dataclass(frozen=True)
class PlacementRequest:
    """Place one more copy of `model_id` needing `size_bytes` on a pod with all `required_labels`."""

    model_id: str
    size_bytes: int
    required_labels: frozenset[str] = frozenset()
    exclude_pods: frozenset[str] = frozenset()   # e.g. pods in failure back-off


@dataclass(frozen=True)
class Eviction:
    pod_id: str
    model_id: str
    size_bytes: int


@dataclass(frozen=True)
class Plan:
    """A placement decision: a pod (and copies to evict first), or why none."""

    pod_id: str | None
    evictions: tuple[Eviction, ...] = ()
    reason: str = ""
    code: str = ""                  # machine-readable failure code when pod_id is None
    clock: float = 0.0
    """The GDSF clock after this plan: `PlacementConfig.gdsf_clock`, raised to the highest
    priority evicted. `place()` always sets it; store it and pass it back next time."""

    @property
    def ok(self) -> bool:
        return self.pod_id is not None

    @property
    def evicted_bytes(self) -> int:
        return sum(e.size_bytes for e in self.evictions)


@dataclass(frozen=True)
class PlacementConfig:
    policy: EvictionPolicy = EvictionPolicy.USAGE_WEIGHTED
    # a copy evicted sooner than this after loading is protected (no ping-pong)
    min_residency_seconds: float = 30.0
    min_copies: dict[str, int] = field(default_factory=dict)
    gdsf_clock: float = 0.0
    """GDSF inflation clock L (usage-weighted only): the priority of the last evicted copy.
    Placement is pure, so the caller keeps it and passes back `Plan.clock`."""


# failure codes a Plan can carry
NO_COMPATIBLE_RUNTIME = "no-compatible-runtime"
TOO_BIG = "too-big"
ALL_BUSY_LOADING = "all-busy-loading"
NO_ROOM = "no-room"
FAILURE_CODES = frozenset({NO_COMPATIBLE_RUNTIME, TOO_BIG, ALL_BUSY_LOADING, NO_ROOM})
