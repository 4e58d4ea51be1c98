"""shift.ShiftDetector: a jump of the miss ratio is a shift; steady traffic, a quiet cluster,
a cold start and a counter reset are not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.scheduler.shift import ShiftConfig, ShiftDetector


def _feed(det: ShiftDetector, ticks: list[tuple[int, int]], *, start: float = 0.0,
          requests: int = 0, loads: int = 0) -> tuple[list[float], int, int]:
    """One tick per second: (requests, loads) in that second. Returns the fired times and the totals."""
    fired = []
    for k, (r, lo) in enumerate(ticks):
        requests += r
        loads += lo
        now = start + k + 1
        if det.observe(now=now, requests=requests, loads=loads):
            fired.append(now)
    return fired, requests, loads


def test_a_jump_of_the_miss_ratio_fires_once_then_cools_down() -> None:
    det = ShiftDetector()
    fired, r, lo = _feed(det, [(100, 20)] * 600)                  # 20% misses for 10 minutes
    assert fired == []
    jump, r, lo = _feed(det, [(100, 60)] * 60, start=600, requests=r, loads=lo)   # 60%
    assert len(jump) == 1 and 600 < jump[0] <= 615                # within one window
    assert det.shifts == 1
    # the ratio stays high while the new set loads: no second verdict, during the cooldown
    # or after it (the baseline has risen by then)
    more, r, lo = _feed(det, [(100, 60)] * 200, start=660, requests=r, loads=lo)
    assert more == []
    # back to normal for a while, then the next shift is detected too
    _, r, lo = _feed(det, [(100, 20)] * 900, start=860, requests=r, loads=lo)
    again, _, _ = _feed(det, [(100, 60)] * 60, start=1760, requests=r, loads=lo)
    assert len(again) == 1 and det.shifts == 2


def test_both_thresholds_are_needed() -> None:
    # 5% -> 15%: three times the baseline but only 0.10 above it
    det = ShiftDetector()
    _, r, lo = _feed(det, [(100, 5)] * 600)
    assert _feed(det, [(100, 15)] * 60, start=600, requests=r, loads=lo)[0] == []
    # 40% -> 70%: 0.30 above but under twice the baseline
    det = ShiftDetector()
    _, r, lo = _feed(det, [(100, 40)] * 600)
    assert _feed(det, [(100, 70)] * 60, start=600, requests=r, loads=lo)[0] == []


def test_no_verdict_on_a_quiet_cluster_or_before_a_full_window() -> None:
    det = ShiftDetector()
    _, r, lo = _feed(det, [(2, 0)] * 600)
    assert _feed(det, [(10, 10)] * 15, start=600, requests=r, loads=lo)[0] == []   # 150 requests < 200
    cold = ShiftDetector(ShiftConfig(window_seconds=15))
    assert _feed(cold, [(100, 0)] * 5 + [(100, 100)] * 9)[0] == []    # 14 s of history only


def test_counters_going_backwards_restart_the_history() -> None:
    det = ShiftDetector()
    _feed(det, [(100, 20)] * 600)
    # a Redis restart: the counters start from zero; a full new window is needed
    assert not det.observe(now=601, requests=50, loads=50)
    fired, _, _ = _feed(det, [(100, 90)] * 30, start=601, requests=50, loads=50)
    assert fired and fired[0] >= 601 + ShiftConfig().window_seconds


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ShiftConfig(ratio=0.5)
    with pytest.raises(ValueError):
        ShiftConfig(window_seconds=0)


@settings(max_examples=60, deadline=None)
@given(
    miss=st.integers(min_value=0, max_value=100),
    rate=st.integers(min_value=1, max_value=500),
    seconds=st.integers(min_value=1, max_value=900),
)
def test_steady_traffic_never_fires(miss: int, rate: int, seconds: int) -> None:
    """The same miss ratio every second is never a shift, whatever the ratio and the rate."""
    det = ShiftDetector()
    loads = rate * miss // 100
    assert _feed(det, [(rate, loads)] * seconds)[0] == []
