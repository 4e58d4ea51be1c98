"""The benchmarks still run: each entry point on a tiny cluster (figures not judged here).

`make bench-placement` is not part of `make test` (it takes minutes and its figures are
for people), so a change to a script's keys or arguments could break it unnoticed; these
run the same code paths at a size that takes seconds. The route-publishing run checks
its update against the in-memory table of the same events itself.
"""

from __future__ import annotations

from bench.placement.latency import placement_latency, route_publish, route_publish_end_to_end
from meshserve.scheduler.models import EvictionPolicy


def test_route_publishing_through_redis_runs_and_counts_every_change() -> None:
    result = route_publish_end_to_end(models=300, pods=12, changes=60, repeats=2, seed=3)
    assert result.changes > 0 and result.entries >= result.changes and result.wire_bytes > 0


def test_in_process_route_publishing_and_decision_latency_run() -> None:
    pub = route_publish(models=300, pods=12, changes=60, batch=60, repeats=2, seed=3)
    assert pub.wire_bytes > 0
    lat = placement_latency(models=2_000, pods=20, calls=50, policy=EvictionPolicy.USAGE_WEIGHTED, seed=3,
                            eviction_candidates=16)
    assert lat.calls == 50 and lat.agreed == lat.calls
