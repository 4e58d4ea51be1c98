"""The pod's instance metrics (metrics.py): upstream's figures from the copies it holds."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from meshserve.puller.metrics import Copy, InstanceCollector, instance_stats


def test_an_empty_pod_uses_nothing_and_has_no_lru() -> None:
    s = instance_stats([], capacity=1000, now=50.0)
    assert (s.used_bytes, s.used_bps, s.models, s.lru_seconds, s.lru_age_seconds) == (0, 0, 0, 0.0, 0.0)


def test_use_is_in_bytes_and_basis_points_and_the_lru_is_the_oldest_use() -> None:
    copies = [Copy(300, True, 40.0), Copy(200, False, 10.0)]
    s = instance_stats(copies, capacity=2000, now=70.0)
    assert (s.capacity_bytes, s.used_bytes, s.used_bps, s.models) == (2000, 500, 2500, 2)
    assert (s.lru_seconds, s.lru_age_seconds, s.measured_bytes) == (10.0, 60.0, 300)


def test_no_capacity_is_zero_basis_points() -> None:
    assert instance_stats([Copy(5, True, 1.0)], capacity=0, now=1.0).used_bps == 0


def test_the_collector_serves_gauges_with_upstreams_names() -> None:
    registry = CollectorRegistry()
    registry.register(InstanceCollector(lambda: ([Copy(1 << 20, True, 100.0)], 4 << 20, 130.0)))
    assert registry.get_sample_value("modelmesh_instance_capacity_bytes") == 4 << 20
    assert registry.get_sample_value("modelmesh_instance_used_bytes") == 1 << 20
    assert registry.get_sample_value("modelmesh_instance_used_bps") == 2500
    assert registry.get_sample_value("modelmesh_instance_lru_age_seconds") == 30
    assert registry.get_sample_value("modelmesh_instance_lru_seconds") == 100
    assert registry.get_sample_value("modelmesh_instance_models_total") == 1
