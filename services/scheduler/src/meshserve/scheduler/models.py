"""Domain values shared by placement, the store and the service: frozen, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

ModelId = NewType("ModelId", str)
PodId = NewType("PodId", str)


class CopyState(str, enum.Enum):
    LOADING = "loading"
    LOADED = "loaded"


class EvictionPolicy(str, enum.Enum):
    LRU = "lru"
    USAGE_WEIGHTED = "usage-weighted"


@dataclass(frozen=True)
class CopyView:
    """One copy of a model on one pod, as placement sees it."""

    model_id: str
    size_bytes: int
    state: CopyState = CopyState.LOADED
    last_used: float = 0.0          # seconds (any epoch, same clock as `now`)
    hits: float = 0.0               # requests counted for this copy
    in_flight: int = 0              # requests being served right now
    loaded_at: float = 0.0
    load_cost: float = 1.0          # seconds the load took (or an estimate)


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

    @property
    def ok(self) -> bool:
        return self.pod_id is not None


@dataclass(frozen=True)
class PlacementConfig:
    policy: EvictionPolicy = EvictionPolicy.USAGE_WEIGHTED
    # a copy evicted sooner than this after loading is protected (no ping-pong)
    min_residency_seconds: float = 30.0
    min_copies: dict[str, int] = field(default_factory=dict)


# failure codes a Plan can carry
NO_COMPATIBLE_RUNTIME = "no-compatible-runtime"
TOO_BIG = "too-big"
ALL_BUSY_LOADING = "all-busy-loading"
NO_ROOM = "no-room"
