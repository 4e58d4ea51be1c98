"""The pod's own metrics (the puller's :2112, MESHSERVE_PULLER_METRICS_PORT): ModelMesh's
per-instance gauges with its names and units, and ours beside them.

Upstream serves these from each runtime pod; here the puller is the process that knows the
pod's capacity and its copies. `instance_stats` is pure; `InstanceCollector` reads the
service's state when Prometheus scrapes.

The pod does not see requests (Envoy and the router send them to the model server), so a
copy's "last used" is the time it was loaded until its pod learns more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MODEL_SERVER_RSS = Gauge(
    "meshserve_puller_model_server_rss_bytes",
    "Resident memory of the pod's model server as last measured (what the heartbeat reports as used)",
)


@dataclass(frozen=True)
class Copy:
    size: int          # bytes the copy is accounted at (measured, else predicted)
    measured: bool
    last_used: float   # seconds since the epoch


@dataclass(frozen=True)
class InstanceStats:
    capacity_bytes: int
    used_bytes: int
    used_bps: int
    lru_seconds: float   # last use of the least recently used copy (epoch seconds; 0: none)
    lru_age_seconds: float
    models: int
    measured_bytes: int


def instance_stats(copies: Iterable[Copy], *, capacity: int, now: float) -> InstanceStats:
    """Upstream's per-pod figures: capacity and use in bytes, use in basis points (1/100 of
    a percent, 0 when there is no capacity), the LRU copy's last use and its age."""
    held = list(copies)
    used = sum(c.size for c in held)
    lru = min((c.last_used for c in held), default=0.0)
    return InstanceStats(
        capacity_bytes=capacity,
        used_bytes=used,
        used_bps=int(used / capacity * 10_000) if capacity > 0 else 0,
        lru_seconds=lru,
        lru_age_seconds=max(0.0, now - lru) if held else 0.0,
        models=len(held),
        measured_bytes=sum(c.size for c in held if c.measured),
    )


class InstanceCollector(Collector):
    """Computes the gauges at scrape time from `read()` -> (copies, capacity, now)."""

    def __init__(self, read: Callable[[], tuple[list[Copy], int, float]]) -> None:
        self.read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        copies, capacity, now = self.read()
        s = instance_stats(copies, capacity=capacity, now=now)
        for name, doc, value in (
            ("modelmesh_instance_capacity_bytes", "Effective model capacity of pod excluding unload buffer", s.capacity_bytes),
            ("modelmesh_instance_used_bytes", "Amount of capacity currently in use by loaded models", s.used_bytes),
            ("modelmesh_instance_used_bps", "Amount of capacity used in basis points (100ths of percent)", s.used_bps),
            ("modelmesh_instance_lru_seconds",
             "Last used time of least recently used model in pod (in secs since epoch)", int(s.lru_seconds)),
            ("modelmesh_instance_lru_age_seconds",
             "Last used age of least recently used model in pod (secs ago)", int(s.lru_age_seconds)),
            ("modelmesh_instance_models_total", "Number of model copies loaded in pod", s.models),
            ("meshserve_puller_measured_bytes",
             "Bytes of the copies whose size was measured on this pod (the rest are predictions)", s.measured_bytes),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, doc, value=value)
