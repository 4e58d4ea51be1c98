"""Prometheus metrics of the scheduler (:2112): ModelMesh's load, unload, eviction and
model-count metrics with its names, units (milliseconds, bytes), buckets and labels, and
ours (`meshserve_scheduler_*`) beside them where they say more.

The scheduler sees every placement, so it counts them where they are recorded
(loading.py, unloading.py). Upstream's three model counts are deployment-wide and published
by one instance at a time: here by the replica holding the leader lease
(`ModelCounts.publish`, `withdraw`). No I/O here; `model_counts` is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MS_TIME_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 75, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000, 120000, 300000)
"""Upstream's buckets for every millisecond timing histogram."""
_S, _M, _H, _D = 1000, 60_000, 3_600_000, 86_400_000
AGE_BUCKETS = (30 * _S, 5 * _M, 15 * _M, 1 * _H, 4 * _H, 12 * _H, 1 * _D, 7 * _D, 30 * _D, 90 * _D)
"""Upstream's age-at-eviction buckets (ms): 30 s to 90 days."""
MODEL_SIZE_BUCKETS = tuple(float(256 * 1024 * 4**i) for i in range(8))
"""Upstream's model-size buckets: 256 KiB, x4 each, eight of them (to 4 GiB)."""


@dataclass(frozen=True)
class Counts:
    managed: int
    loaded: int
    with_failure: int


def model_counts(
    model_ids: Iterable[str], copy_states: Mapping[str, Iterable[str]], failed: Iterable[str]
) -> Counts:
    """Upstream's model counts: models registered, models with at least one loaded copy,
    and models with a recent load failure (`failed`: model ids with an unexpired failure)."""
    ids = set(model_ids)
    loaded = sum(1 for m in ids if any(s == "loaded" for s in copy_states.get(m, ())))
    return Counts(managed=len(ids), loaded=loaded, with_failure=len(ids & set(failed)))


class ModelCounts(Collector):
    """The three deployment-wide gauges, served only while `publish`ed (by the leader)."""

    def __init__(self) -> None:
        self.counts: Counts | None = None

    def publish(self, counts: Counts) -> None:
        self.counts = counts

    def withdraw(self) -> None:
        self.counts = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.counts
        if counts is None:
            return
        yield GaugeMetricFamily(
            "modelmesh_models_loaded_total", "Total number of models with at least one loaded copy", value=counts.loaded
        )
        yield GaugeMetricFamily(
            "modelmesh_models_with_failure_total", "Total number of models with one or more recent load failures",
            value=counts.with_failure,
        )
        yield GaugeMetricFamily("modelmesh_models_managed_total", "Total number of models managed", value=counts.managed)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class SchedulerMetrics:
    """The scheduler's metrics; the label set (per-model or not) is fixed when made."""

    def __init__(self, *, per_model: bool, registry: CollectorRegistry = REGISTRY) -> None:
        self.per_model = per_model
        labels = ["modelId", "vModelId"] if per_model else []
        self.load_time = Histogram(
            "modelmesh_loadmodel_milliseconds", "Time taken to load model", labels, buckets=MS_TIME_BUCKETS, registry=registry
        )
        self.unload_time = Histogram(
            "modelmesh_unloadmodel_milliseconds", "Time taken to unload model", labels, buckets=MS_TIME_BUCKETS,
            registry=registry,
        )
        self.sizing_time = Histogram(
            "modelmesh_model_sizing_milliseconds", "Time taken to perform model sizing", labels, buckets=MS_TIME_BUCKETS,
            registry=registry,
        )
        self.age_at_eviction = Histogram(
            "modelmesh_age_at_eviction_milliseconds", "Time since model was last used when evicted", labels,
            buckets=AGE_BUCKETS, registry=registry,
        )
        self.loaded_size = Histogram(
            "modelmesh_loaded_model_size_bytes", "Reported size of loaded model", labels, buckets=MODEL_SIZE_BUCKETS,
            registry=registry,
        )
        # upstream's counters carry no labels, per-model or not
        self.load_failures = Counter("modelmesh_loadmodel_failure", "Model load failures", registry=registry)
        self.unload_failures = Counter(
            "modelmesh_unloadmodel_failure", "Unload model failures (not counting multiple attempts for same copy)",
            registry=registry,
        )
        self.unload_attempt_failures = Counter(
            "modelmesh_unloadmodel_attempt_failure", "Unload model attempt failures", registry=registry
        )
        # ours: what upstream's do not say
        self.copy_events = Counter(
            "meshserve_scheduler_copy_events_total",
            "Copies placed, failed, and removed by cause (evicted, unloaded, scaled-down, ...)",
            ["kind"], registry=registry,
        )
        self.load_size = Histogram(
            "meshserve_scheduler_loaded_model_bytes",
            "Size of each loaded copy as settled: measured on the pod, or the prediction when it could not measure",
            ["source"], buckets=MODEL_SIZE_BUCKETS, registry=registry,
        )
        self.reserved_error = Histogram(
            "meshserve_scheduler_reservation_error_ratio",
            "Settled size / reserved size of each load (1: the reservation was right)",
            buckets=(0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 4), registry=registry,
        )
        self.model_counts = ModelCounts()
        registry.register(self.model_counts)
        self._registry = registry

    def _by_model(self, histogram: Histogram, model_id: str) -> Histogram:
        return histogram.labels(model_id, model_id) if self.per_model else histogram

    def loaded(self, *, model_id: str, seconds: float, reserved: int, size: int, measured: bool) -> None:
        self._by_model(self.load_time, model_id).observe(seconds * 1000)
        self._by_model(self.loaded_size, model_id).observe(size)
        self.load_size.labels("measured" if measured else "predicted").observe(size)
        if reserved > 0:
            self.reserved_error.observe(size / reserved)
        self.copy_events.labels("placed").inc()

    def load_failed(self) -> None:
        self.load_failures.inc()
        self.copy_events.labels("failed").inc()

    def removed(self, *, model_id: str, kind: str, age_ms: float | None) -> None:
        """A copy released (`kind`: evicted, unloaded, scaled-down, ...); an eviction with
        the time since the copy was last used."""
        self.copy_events.labels(kind).inc()
        if kind == "evicted" and age_ms is not None:
            self._by_model(self.age_at_eviction, model_id).observe(max(0.0, age_ms))

    def unloaded(self, *, model_id: str, seconds: float, ok: bool) -> None:
        if ok:
            self._by_model(self.unload_time, model_id).observe(seconds * 1000)
        else:
            # one attempt per copy here: each failed attempt is also a failed unload
            self.unload_attempt_failures.inc()
            self.unload_failures.inc()

    def sized(self, *, model_id: str, seconds: float) -> None:
        self._by_model(self.sizing_time, model_id).observe(seconds * 1000)

    def close(self) -> None:
        """Unregister (a process that makes them again, as tests do)."""
        for collector in (
            self.load_time, self.unload_time, self.sizing_time, self.age_at_eviction, self.loaded_size,
            self.load_failures, self.unload_failures, self.unload_attempt_failures, self.copy_events,
            self.load_size, self.reserved_error, self.model_counts,
        ):
            self._registry.unregister(collector)


_current: SchedulerMetrics | None = None


def configure(*, per_model: bool) -> SchedulerMetrics:
    """The process's metrics, made once (again only when `per_model` changes)."""
    global _current
    if _current is not None and _current.per_model == per_model:
        return _current
    if _current is not None:
        _current.close()
    _current = SchedulerMetrics(per_model=per_model)
    return _current


def current() -> SchedulerMetrics:
    return _current or configure(per_model=False)
