"""Model pressure of one runtime: how much loaded-model memory its pods evict per minute and
how long the least recently used copy on them has gone unused (what the controller's
autoscaler, `meshserve.controller.autoscale`, scales runtime pods on).

A read model over data the scheduler keeps anyway; it writes nothing:
* the runtime's pods, their allocations and copies, and the models' usage: one
  `placement_snapshot` of live state (the pods whose `runtime` is the one asked);
* capacity evictions: the event log's `evicted` events of the last `window_seconds` on those
  pods. Evictions of a drain (`CopyScaler.drain_pod`, message `pod <id> drained`) are left
  out: emptying a pod on purpose is not pressure, and counting it would make a scale-down
  look like churn. Evictions on a pod that has left since are not counted (its runtime is no
  longer known);
* the bytes of an eviction: the model's size as the registry knows it (measured, else
  predicted, else declared, else the pod's default model size). The event does not carry
  the bytes the copy held, and the copy's allocation is gone by the time it is read.

LRU age: for every loaded copy on a pod that is not draining, the time since the model was
last used (since the copy was loaded when that is later); the largest of these. None when the
runtime holds no loaded copy.

`compute_pressure` is the pure part (tested without stores); `read_pressure` gathers its
inputs. May import: the store wing (live state, the registry) and `models`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshserve.scheduler.models import CopyState, PodSnapshot
from meshserve.scheduler.store.live import LiveState, now_ms
from meshserve.scheduler.store.registry import Registry

EVICTED = "evicted"
MAX_EVENTS = 1000
"""Eviction events read per request (the newest; a window with more is churn by any measure)."""


@dataclass(frozen=True)
class Eviction:
    model_id: str
    pod_id: str
    message: str


@dataclass(frozen=True)
class PodPressure:
    pod_id: str
    capacity_bytes: int
    allocated_bytes: int
    draining: bool
    loaded_copies: int
    lru_copy_age_seconds: float | None


@dataclass(frozen=True)
class Pressure:
    runtime: str
    window_seconds: float
    pods: tuple[PodPressure, ...]
    capacity_bytes: int
    """Of the pods that are not draining."""
    allocated_bytes: int
    evictions: int
    evicted_bytes: int
    lru_copy_age_seconds: float | None

    @property
    def evicted_bytes_per_minute(self) -> float:
        return self.evicted_bytes * 60.0 / self.window_seconds if self.window_seconds > 0 else 0.0


def is_drain(eviction: Eviction) -> bool:
    """An eviction made by draining its pod (see the module docstring)."""
    return eviction.message == f"pod {eviction.pod_id} drained"


def compute_pressure(
    *, runtime: str, window_seconds: float, pods: Sequence[PodSnapshot], usage: Mapping[str, tuple[float, int]],
    evictions: Iterable[Eviction], sizes: Mapping[str, int], now_ms: int,
) -> Pressure:
    """The runtime's pressure from one snapshot of its pods and the evictions of the window.

    Args:
        pods: snapshots of the runtime's pods (others are ignored).
        usage: model id -> (hits, last used ms).
        evictions: `evicted` events of the window (any pod; only the runtime's count).
        sizes: model id -> bytes one copy takes (missing: the pod's default model size).
    """
    mine = [p for p in pods if p.pod.runtime == runtime]
    by_id = {p.pod.pod_id: p for p in mine}
    rows: list[PodPressure] = []
    for snap in mine:
        ages = []
        for model_id, copy in snap.copies.items():
            if copy.state != CopyState.LOADED.value:
                continue
            last_used = max(int(usage.get(model_id, (0.0, 0))[1]), copy.since_ms)
            ages.append(max(0.0, (now_ms - last_used) / 1000.0) if last_used > 0 else 0.0)
        rows.append(PodPressure(
            pod_id=snap.pod.pod_id, capacity_bytes=snap.pod.capacity, allocated_bytes=snap.pod.allocated,
            draining=snap.pod.draining, loaded_copies=len(ages), lru_copy_age_seconds=max(ages) if ages else None,
        ))
    count, evicted = 0, 0
    for ev in evictions:
        pod = by_id.get(ev.pod_id)
        if pod is None or is_drain(ev):
            continue
        count += 1
        evicted += max(0, sizes.get(ev.model_id) or pod.pod.default_size)
    serving = [r for r in rows if not r.draining]
    ages = [r.lru_copy_age_seconds for r in serving if r.lru_copy_age_seconds is not None]
    return Pressure(
        runtime=runtime, window_seconds=window_seconds, pods=tuple(sorted(rows, key=lambda r: r.pod_id)),
        capacity_bytes=sum(r.capacity_bytes for r in serving), allocated_bytes=sum(r.allocated_bytes for r in serving),
        evictions=count, evicted_bytes=evicted, lru_copy_age_seconds=max(ages) if ages else None,
    )


async def read_pressure(*, live: LiveState, registry: Registry, runtime: str, window_seconds: float) -> Pressure:
    """`compute_pressure` over live state and the event log, now."""
    snapshot = await live.placement_snapshot(await live.pod_ids())
    now = now_ms()
    since = dt.datetime.fromtimestamp((now - window_seconds * 1000) / 1000, dt.UTC)
    events = await registry.list_events(since=since, kinds=[EVICTED], limit=MAX_EVENTS)
    pod_ids = {p.pod.pod_id for p in snapshot.pods if p.pod.runtime == runtime}
    evictions = [Eviction(e.model_id, e.pod_id, e.message) for e in events if e.pod_id in pod_ids]
    sizes: dict[str, int] = {}
    for model_id in sorted({e.model_id for e in evictions}):
        record = await registry.find_model(model_id)
        if record is not None:
            sizes[model_id] = record.measured_size or record.predicted_size or record.declared_size
    return compute_pressure(
        runtime=runtime, window_seconds=window_seconds, pods=snapshot.pods, usage=snapshot.usage,
        evictions=evictions, sizes=sizes, now_ms=now,
    )
