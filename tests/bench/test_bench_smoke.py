"""The benchmarks still run: each entry point on a tiny cluster (figures not judged here).

`make bench-placement` is not part of `make test` (it takes minutes and its figures are
for people), so a change to a script's keys or arguments could break it unnoticed; these
run the same code paths at a size that takes seconds. The route-publishing run checks
its update against the in-memory table of the same events itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.placement.latency import placement_latency, route_publish, route_publish_end_to_end
from bench.placement.sim import online_bound, pod_capacities, simulate_place
from bench.placement.traces import Phase, model_sizes, shifting_trace, zipf_trace
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


def test_knapsack_bound_takes_value_per_byte_and_cuts_the_last_item() -> None:
    # value per byte: b 2.0, a 1.0, c 0.5 -> all of b, then 2 of a's 3 bytes
    value, size = np.array([3.0, 2.0, 1.0]), np.array([3, 1, 2], dtype=np.int64)
    phases = (Phase(0, 10, value / value.sum()),)
    assert online_bound(phases, size, capacity=3, warmup=0) == pytest.approx(4.0 / 6.0)
    assert online_bound(phases, size, capacity=6, warmup=0) == pytest.approx(1.0)
    # phases count by how many of their requests come after the warm-up
    # (capacity 2: phase one holds b and a third of a, 0.5; phase two b and half of c, 0.75)
    other = (Phase(0, 10, value / value.sum()), Phase(10, 40, np.array([0.0, 0.5, 0.5])))
    assert online_bound(other, size, capacity=2, warmup=5) == pytest.approx((5 * 0.5 + 30 * 0.75) / 35)


def test_traces_carry_the_distributions_their_requests_were_drawn_from() -> None:
    zipf = zipf_trace(n=500, length=40_000, alpha=1.0, seed=5)
    shift = shifting_trace(n=500, length=40_000, alpha=1.0, phases=4, seed=5)
    for trace in (zipf, shift):
        assert [p.start for p in trace.phases[1:]] == [p.end for p in trace.phases[:-1]]
        assert trace.phases[-1].end == len(trace.requests)
        for phase in trace.phases:
            counts = np.bincount(trace.requests[phase.start:phase.end], minlength=500)
            n = phase.end - phase.start
            top = np.argsort(-phase.probs)[:5]
            assert phase.probs.sum() == pytest.approx(1.0)
            # each of the five likeliest models drawn within 5 standard deviations of n x p
            sd = np.sqrt(n * phase.probs[top] * (1 - phase.probs[top]))
            assert np.all(np.abs(counts[top] - n * phase.probs[top]) < 5 * sd)


def test_no_policy_replay_beats_the_online_bound() -> None:
    sizes = model_sizes(n=300, seed=4, median_mib=50.0)
    caps = pod_capacities(sizes, fraction=0.2, pods=2)
    trace = zipf_trace(n=300, length=20_000, alpha=1.0, seed=4)
    bound = online_bound(trace.phases, sizes, capacity=sum(caps), warmup=2_000)
    slack = 4 * np.sqrt(bound * (1 - bound) / 18_000)     # the realised ratio's noise
    for policy in EvictionPolicy:
        replay = simulate_place(trace.requests, sizes, capacities=caps, policy=policy, warmup=2_000)
        assert 0.3 < replay.hit_ratio <= bound + slack



def test_the_storage_bench_runs_on_a_small_model() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "bench.storage", "--sizes-mib", "1", "--repeats", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cat" in done.stdout
