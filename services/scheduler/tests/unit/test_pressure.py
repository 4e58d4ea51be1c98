"""pressure.compute_pressure: the LRU copy age rule, drains and other runtimes left out, sizes."""

from __future__ import annotations

from meshserve.scheduler.models import CopyRecord, PodInfo, PodSnapshot
from meshserve.scheduler.pressure import Eviction, compute_pressure, is_drain

NOW = 1_000_000_000


def pod(pod_id: str, runtime: str = "rt", *, draining: bool = False, copies: dict[str, tuple[str, int]] | None = None) -> PodSnapshot:
    info = PodInfo(
        pod_id=pod_id, runtime=runtime, labels=frozenset(), management_address="", grpc_address="", rest_address="",
        capacity=100, allocated=10 * len(copies or {}), used=0, loading=0, max_loading=1, default_size=7,
        heartbeat_ms=NOW, started_ms=0, draining=draining,
    )
    records = {m: CopyRecord(m, pod_id, state, since) for m, (state, since) in (copies or {}).items()}
    return PodSnapshot(pod=info, allocations={m: 10 for m in records}, copies=records)


def test_lru_age_is_the_oldest_idle_loaded_copy() -> None:
    pods = [
        pod("a", copies={"m1": ("loaded", NOW - 500_000), "m2": ("loaded", NOW - 900_000), "m3": ("loading", NOW - 999_000)}),
        pod("b", copies={"m4": ("loaded", NOW - 300_000)}),
    ]
    usage = {"m1": (3.0, NOW - 10_000), "m2": (1.0, NOW - 200_000)}   # m4 never used: since its load
    p = compute_pressure(runtime="rt", window_seconds=60, pods=pods, usage=usage, evictions=[], sizes={}, now_ms=NOW)
    assert p.lru_copy_age_seconds == 300.0          # m4: loaded 300 s ago, never used
    assert {r.pod_id: r.lru_copy_age_seconds for r in p.pods} == {"a": 200.0, "b": 300.0}
    assert {r.pod_id: r.loaded_copies for r in p.pods} == {"a": 2, "b": 1}   # loading copies do not count


def test_draining_pods_leave_totals_and_age_but_stay_listed() -> None:
    pods = [pod("a", copies={"m1": ("loaded", NOW - 1000)}), pod("b", draining=True, copies={"m2": ("loaded", NOW - 99_000)})]
    p = compute_pressure(runtime="rt", window_seconds=60, pods=pods, usage={}, evictions=[], sizes={}, now_ms=NOW)
    assert p.lru_copy_age_seconds == 1.0 and p.capacity_bytes == 100 and p.allocated_bytes == 10
    assert [r.pod_id for r in p.pods] == ["a", "b"]


def test_evictions_count_only_capacity_evictions_on_the_runtimes_pods() -> None:
    pods = [pod("a"), pod("x", runtime="other")]
    evictions = [
        Eviction("m1", "a", "to make room for q"),
        Eviction("m2", "a", "to make room for q"),      # unknown size: the pod's default size
        Eviction("m1", "a", "pod a drained"),           # a drain
        Eviction("m1", "x", "to make room for q"),      # another runtime
        Eviction("m1", "gone", "to make room for q"),   # a pod that left
    ]
    p = compute_pressure(runtime="rt", window_seconds=30, pods=pods, usage={}, evictions=evictions, sizes={"m1": 50}, now_ms=NOW)
    assert (p.evictions, p.evicted_bytes) == (2, 57)
    assert p.evicted_bytes_per_minute == 114.0
    assert p.lru_copy_age_seconds is None


def test_is_drain_matches_the_drain_message_of_that_pod_only() -> None:
    assert is_drain(Eviction("m", "p-1", "pod p-1 drained"))
    assert not is_drain(Eviction("m", "p-1", "pod p-2 drained"))
    assert not is_drain(Eviction("m", "p-1", "to make room for pod p-1 drained-model"))
