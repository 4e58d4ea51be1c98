"""The scheduler's metrics (metrics.py): upstream's model counts and units, leader-only gauges."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from meshserve.scheduler.metrics import Counts, SchedulerMetrics, model_counts


def test_model_counts_follow_upstreams_meanings() -> None:
    counts = model_counts(
        ["a", "b", "c", "d"],
        {"a": ["loaded", "loading"], "b": ["loading"], "c": [], "gone": ["loaded"]},
        failed=["b", "gone"],
    )
    assert counts == Counts(managed=4, loaded=1, with_failure=1)


def test_model_counts_are_served_only_while_published() -> None:
    registry = CollectorRegistry()
    m = SchedulerMetrics(per_model=False, registry=registry)
    assert registry.get_sample_value("modelmesh_models_managed_total") is None
    m.model_counts.publish(Counts(managed=3, loaded=2, with_failure=1))
    assert registry.get_sample_value("modelmesh_models_managed_total") == 3
    assert registry.get_sample_value("modelmesh_models_loaded_total") == 2
    assert registry.get_sample_value("modelmesh_models_with_failure_total") == 1
    m.model_counts.withdraw()
    assert registry.get_sample_value("modelmesh_models_loaded_total") is None


@pytest.mark.parametrize("per_model", [False, True])
def test_times_are_milliseconds_and_model_labels_opt_in(per_model: bool) -> None:
    registry = CollectorRegistry()
    m = SchedulerMetrics(per_model=per_model, registry=registry)
    m.loaded(model_id="x", seconds=0.25, reserved=1000, size=1250, measured=True)
    m.removed(model_id="x", kind="evicted", age_ms=45_000)
    m.unloaded(model_id="x", seconds=0.01, ok=True)
    m.unloaded(model_id="x", seconds=0.01, ok=False)
    m.load_failed()
    labels = {"modelId": "x", "vModelId": "x"} if per_model else {}
    assert registry.get_sample_value("modelmesh_loadmodel_milliseconds_sum", labels) == pytest.approx(250)
    assert registry.get_sample_value("modelmesh_unloadmodel_milliseconds_count", labels) == 1
    assert registry.get_sample_value("modelmesh_age_at_eviction_milliseconds_bucket", {**labels, "le": "300000.0"}) == 1
    assert registry.get_sample_value("modelmesh_age_at_eviction_milliseconds_bucket", {**labels, "le": "30000.0"}) == 0
    assert registry.get_sample_value("modelmesh_loaded_model_size_bytes_sum", labels) == 1250
    assert registry.get_sample_value("modelmesh_loadmodel_failure_total") == 1
    assert registry.get_sample_value("modelmesh_unloadmodel_failure_total") == 1
    assert registry.get_sample_value("modelmesh_unloadmodel_attempt_failure_total") == 1
    assert registry.get_sample_value("meshserve_scheduler_copy_events_total", {"kind": "evicted"}) == 1
    assert registry.get_sample_value("meshserve_scheduler_reservation_error_ratio_bucket", {"le": "1.25"}) == 1
