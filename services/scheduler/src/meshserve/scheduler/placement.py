"""Placement: which pod gets a new copy of a model, and what is evicted to make room.

PURE: no asyncio, redis, grpc or sqlalchemy; the same input always gives the same Plan.

Invariants (checked by the tests):
* a chosen pod never ends above its capacity (allocated - evicted + size <= capacity);
* a pod that already holds the model, is excluded, unhealthy, draining, lacks a
  required label, or has `max_loading` loads in progress is never chosen;
* a Plan without a pod always carries a non-empty reason and a code.

Bin-packing is best fit: among the pods where the model fits without eviction, the
one left with the least free space; ties go to fewer loads in progress, then pod id.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshserve.scheduler.models import (
    ALL_BUSY_LOADING,
    NO_COMPATIBLE_RUNTIME,
    NO_ROOM,
    TOO_BIG,
    PlacementConfig,
    PlacementRequest,
    Plan,
    PodView,
)


def place(
    request: PlacementRequest,
    pods: Sequence[PodView],
    *,
    now: float,
    config: PlacementConfig | None = None,
) -> Plan:
    """Choose a pod for one more copy of `request.model_id`."""
    del now, config  # used by eviction (not in the walking skeleton)
    compatible = [
        p
        for p in pods
        if p.healthy and not p.draining and request.required_labels <= p.labels
    ]
    if not compatible:
        return Plan(
            None,
            reason=f"no running pod supports {_labels(request)}",
            code=NO_COMPATIBLE_RUNTIME,
        )
    candidates = [
        p
        for p in compatible
        if p.pod_id not in request.exclude_pods
        and all(c.model_id != request.model_id for c in p.copies)
    ]
    if not candidates:
        return Plan(None, reason="every compatible pod already holds a copy or is in back-off", code=NO_ROOM)
    biggest = max(p.capacity_bytes for p in candidates)
    if request.size_bytes > biggest:
        return Plan(
            None,
            reason=(
                f"model needs {request.size_bytes} bytes but the largest compatible pod "
                f"has a capacity of {biggest} bytes"
            ),
            code=TOO_BIG,
        )
    ready = [p for p in candidates if p.loading < p.max_loading]
    if not ready:
        return Plan(None, reason="every compatible pod is busy loading other models", code=ALL_BUSY_LOADING)
    fitting = [p for p in ready if p.free_bytes >= request.size_bytes]
    if not fitting:
        return Plan(
            None,
            reason=f"no compatible pod has {request.size_bytes} bytes free",
            code=NO_ROOM,
        )
    best = min(fitting, key=lambda p: (p.free_bytes - request.size_bytes, p.loading, p.pod_id))
    return Plan(
        best.pod_id,
        reason=f"best fit: {best.free_bytes - request.size_bytes} bytes left free on {best.pod_id}",
    )


def _labels(request: PlacementRequest) -> str:
    return ", ".join(sorted(request.required_labels)) or "any model"
