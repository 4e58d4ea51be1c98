"""Every metric series meshserve's services really export, read from their metric registries.

The catalogue is made, not typed in: the metrics modules of router, scheduler, puller and
controller are imported, their module-level prometheus_client metrics read, and the metric
classes they define (`ModelMeshMetrics`, `SchedulerMetrics`, the collectors computed at
scrape time) instantiated into a fresh registry and collected. A metric family becomes the
series names Prometheus stores for it (prometheus_client's text format: a counter `x` is
`x_total` and `x_created`, a histogram `x_bucket`, `x_sum`, `x_count`, `x_created`, ...).
`series_names_by_exposition` checks that rule against prometheus_client's own output.

Every service serves the default registry (`start_http_server()`), so the default process,
platform and GC collectors' series exist on each endpoint too.

A new metric class in one of these modules that the catalogue does not know how to make is an
error (`unknown_metric_classes`), so the catalogue cannot silently fall behind.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

SERVICES = {
    "router": "meshserve.router.metrics",
    "scheduler": "meshserve.scheduler.metrics",
    "puller": "meshserve.puller.metrics",
    "controller": "meshserve.controller.metrics",
}
TARGET_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "service", "job", "instance"})
"""Labels Prometheus (operator) puts on every series of a ServiceMonitor/PodMonitor target."""

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),   # prometheus_client's Summary has no quantiles
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


@dataclass(frozen=True)
class Series:
    name: str
    family: str
    type: str
    labels: frozenset[str]
    services: frozenset[str]


def _make_instances(module: ModuleType) -> dict[str, Callable[[CollectorRegistry], Any]]:
    """How to make each metric class a metrics module defines (widest label set: per-model on)."""
    makers: dict[str, Callable[[CollectorRegistry], Any]] = {}
    if hasattr(module, "ModelMeshMetrics"):
        makers["ModelMeshMetrics"] = lambda reg: module.ModelMeshMetrics(per_model=True, registry=reg)
    if hasattr(module, "SchedulerMetrics"):
        def scheduler(reg: CollectorRegistry) -> Any:
            made = module.SchedulerMetrics(per_model=True, registry=reg)
            made.model_counts.publish(module.Counts(managed=0, loaded=0, with_failure=0))  # served by the leader
            return made
        makers["SchedulerMetrics"] = scheduler
        makers["ModelCounts"] = lambda reg: None   # registered by SchedulerMetrics
    if hasattr(module, "InstanceCollector"):
        makers["InstanceCollector"] = lambda reg: reg.register(module.InstanceCollector(lambda: ([], 0, 0.0)))
    return makers


def unknown_metric_classes() -> list[str]:
    """Metric classes defined in the services' metrics modules that the catalogue cannot make."""
    unknown = []
    for module_name in SERVICES.values():
        module = importlib.import_module(module_name)
        makers = _make_instances(module)
        for name, obj in vars(module).items():
            if not inspect.isclass(obj) or obj.__module__ != module.__name__:
                continue
            takes_registry = "registry" in inspect.signature(obj).parameters
            collects = callable(getattr(obj, "collect", None))   # prometheus_client's Collector protocol
            if (collects or takes_registry) and name not in makers:
                unknown.append(f"{module_name}.{name}")
    return unknown



def _labelnames(metric: MetricWrapperBase) -> frozenset[str]:
    return frozenset(metric._labelnames)


def catalogue() -> dict[str, Series]:
    """Series name -> Series, for every service and the default collectors."""
    found: dict[str, tuple[str, str, set[str], set[str]]] = {}

    def add(service: str, family: str, type_: str, labels: Iterable[str], samples: Iterable[Any] = ()) -> None:
        by_sample: dict[str, set[str]] = {}
        for sample in samples:   # a collector's own output, when it has any, is the truth
            by_sample.setdefault(sample.name, set()).update(sample.labels)
        if not by_sample:        # a labelled metric with no child yet: prometheus_client's rule
            by_sample = {family + suffix: {"le"} if suffix == "_bucket" else set() for suffix in _SUFFIXES[type_]}
        for name, sample_labels in by_sample.items():
            entry = found.setdefault(name, (family, type_, set(), set()))
            entry[2].update(labels, sample_labels)
            entry[3].add(service)

    for service, module_name in SERVICES.items():
        module = importlib.import_module(module_name)
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                for fam in obj.describe():
                    add(service, fam.name, fam.type, _labelnames(obj))
        registry = CollectorRegistry()
        made = [make(registry) for make in _make_instances(module).values()]
        labels_of = {
            fam.name: _labelnames(metric)
            for holder in made if holder is not None
            for metric in vars(holder).values() if isinstance(metric, MetricWrapperBase)
            for fam in metric.describe()
        }
        for fam in registry.collect():
            add(service, fam.name, fam.type, labels_of.get(fam.name, frozenset()), fam.samples)
        for default in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            for fam in default.collect():
                add(service, fam.name, fam.type, (), fam.samples)
    return {
        name: Series(name, family, type_, frozenset(labels), frozenset(services))
        for name, (family, type_, labels, services) in found.items()
    }


def series_names_by_exposition(families: Mapping[str, str]) -> set[str]:
    """What prometheus_client itself writes for one unlabelled metric of each given type
    (`family name -> type`), each observed once: the check on `_SUFFIXES`."""
    from prometheus_client import Counter, Gauge, Histogram, Info, Summary

    registry = CollectorRegistry()
    kinds: dict[str, Callable[[str], Any]] = {
        "counter": lambda n: Counter(n, "c", registry=registry).inc(),
        "gauge": lambda n: Gauge(n, "g", registry=registry).set(1),
        "histogram": lambda n: Histogram(n, "h", registry=registry).observe(1),
        "summary": lambda n: Summary(n, "s", registry=registry).observe(1),
        "info": lambda n: Info(n, "i", registry=registry).info({"a": "b"}),
    }
    for name, type_ in families.items():
        kinds[type_](name)
    text = generate_latest(registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def derived_series_names(families: Mapping[str, str]) -> set[str]:
    return {name + suffix for name, type_ in families.items() for suffix in _SUFFIXES[type_]}
