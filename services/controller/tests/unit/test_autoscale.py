"""autoscale.decide: bounds, cool-down, hysteresis windows (table-driven), and properties under
random and oscillating signals (hypothesis): never outside [min, max], changes a cool-down
apart, no flapping."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.controller.autoscale import Action, Policy, Sample, decide, prune

P = Policy(
    min_pods=1, max_pods=3, up_evicted_bytes_per_minute=100.0, up_window_seconds=30.0,
    down_idle_seconds=60.0, down_window_seconds=50.0, cooldown_seconds=20.0,
)
STEP = 5.0   # one sample every 5 s, each covering the last 10 s


def series(start: float, end: float, *, rate: float, age: float | None, step: float = STEP, window: float = 10.0) -> list[Sample]:
    out, t = [], start
    while t <= end + 1e-9:
        out.append(Sample(at=t, window_seconds=window, evicted_bytes_per_minute=rate, lru_copy_age_seconds=age))
        t += step
    return out


HOT = {"rate": 500.0, "age": 1.0}
COLD = {"rate": 0.0, "age": 120.0}
WARM = {"rate": 50.0, "age": 5.0}      # evictions below the threshold: neither up nor down


@pytest.mark.parametrize(
    ("samples", "current", "last_change", "action", "target"),
    [
        pytest.param([], 0, None, Action.UP, 1, id="below-min-up-at-once"),
        pytest.param([], 5, None, Action.DOWN, 4, id="above-max-down-one-at-a-time"),
        pytest.param([], 5, 99.0, Action.DOWN, 4, id="bounds-ignore-the-cooldown"),
        pytest.param(series(0, 100, **HOT), 1, None, Action.UP, 2, id="churn-for-the-window"),
        pytest.param(series(0, 100, **HOT), 3, None, Action.HOLD, 3, id="churn-at-max-holds"),
        pytest.param(series(75, 100, **HOT), 1, None, Action.HOLD, 1, id="churn-shorter-than-the-window"),
        pytest.param(series(0, 75, **COLD) + series(80, 100, **HOT), 1, None, Action.HOLD, 1, id="churn-started-late"),
        pytest.param(series(0, 95, **HOT) + series(100, 100, **WARM), 1, None, Action.HOLD, 1, id="churn-dipped-at-the-end"),
        pytest.param(series(0, 100, **HOT), 1, 95.0, Action.HOLD, 1, id="in-cooldown"),
        pytest.param(series(0, 100, **HOT), 1, 75.0, Action.HOLD, 1, id="samples-before-the-change-do-not-count"),
        pytest.param(series(0, 200, **HOT), 1, 50.0, Action.UP, 2, id="churn-after-the-change-for-a-window"),
        pytest.param(series(0, 100, **COLD), 2, None, Action.DOWN, 1, id="idle-for-the-window"),
        pytest.param(series(0, 100, **COLD), 1, None, Action.HOLD, 1, id="idle-at-min-holds"),
        pytest.param(series(0, 100, rate=0.0, age=None), 2, None, Action.DOWN, 1, id="nothing-loaded-is-idle"),
        pytest.param(series(0, 100, rate=0.0, age=30.0), 2, None, Action.HOLD, 2, id="lru-copy-too-young"),
        pytest.param(series(0, 100, rate=1.0, age=500.0), 2, None, Action.HOLD, 2, id="any-eviction-blocks-down"),
        pytest.param(series(60, 100, **COLD), 2, None, Action.HOLD, 2, id="idle-shorter-than-the-window"),
        pytest.param(series(0, 100, **WARM), 2, None, Action.HOLD, 2, id="warm-neither"),
        pytest.param(series(0, 80, **HOT) + series(95, 100, **HOT), 1, None, Action.HOLD, 1, id="a-gap-in-coverage"),
        pytest.param(series(0, 100, **HOT, step=10.0, window=10.0), 1, None, Action.UP, 2, id="touching-windows-cover"),
        pytest.param(series(0, 120, **HOT)[::-1], 1, None, Action.UP, 2, id="order-of-samples-does-not-matter"),
        pytest.param(series(0, 130, **HOT), 1, None, Action.UP, 2, id="future-samples-ignored-now-100"),
        pytest.param(series(0, 85, **HOT), 1, None, Action.HOLD, 1, id="readings-stopped-15s-ago"),
        pytest.param(series(0, 90, **COLD), 2, None, Action.DOWN, 1, id="newest-reading-10s-old-still-covers"),
    ],
)
def test_decide(samples: list[Sample], current: int, last_change: float | None, action: Action, target: int) -> None:
    d = decide(samples, current=current, policy=P, now=100.0, last_change=last_change)
    assert (d.action, d.target) == (action, target), d.reason
    assert d.reason


def test_future_samples_are_not_counted() -> None:
    cold_then_hot = series(0, 100, **COLD) + series(105, 200, **HOT)
    assert decide(cold_then_hot, current=2, policy=P, now=100.0, last_change=None).action is Action.DOWN


@pytest.mark.parametrize(
    "bad",
    [
        {"min_pods": 0}, {"min_pods": 4}, {"up_evicted_bytes_per_minute": 0.0}, {"up_window_seconds": 0.0},
        {"down_window_seconds": -1.0}, {"down_idle_seconds": -1.0}, {"cooldown_seconds": -1.0},
    ],
)
def test_policy_is_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        replace(P, **bad)


def test_prune_keeps_what_decide_needs() -> None:
    samples = series(0, 500, **HOT)
    kept = prune(samples, now=500.0, policy=P)
    assert kept[0].at == 450.0 - STEP and kept[-1].at == 500.0   # the boundary sample of the 50 s window stays
    for now, current in ((500.0, 1), (500.0, 2)):
        assert decide(kept, current=current, policy=P, now=now, last_change=None) == decide(
            samples, current=current, policy=P, now=now, last_change=None)


# --- properties -------------------------------------------------------------------------------

policies = st.builds(
    Policy,
    min_pods=st.integers(1, 3),
    max_pods=st.integers(3, 6),
    up_evicted_bytes_per_minute=st.floats(1.0, 1000.0),
    up_window_seconds=st.floats(5.0, 60.0),
    down_idle_seconds=st.floats(0.0, 100.0),
    down_window_seconds=st.floats(5.0, 60.0),
    cooldown_seconds=st.floats(0.0, 60.0),
)
signal = st.lists(
    st.tuples(st.floats(0.0, 5000.0), st.one_of(st.none(), st.floats(0.0, 500.0))), min_size=1, max_size=120
)


def run(policy: Policy, values: list[tuple[float, float | None]], *, start: int, step: float = 2.0) -> list[tuple[float, int, Action]]:
    """Feed the samples one by one, applying each decision as the controller does."""
    samples: list[Sample] = []
    current, last_change, changes = start, None, []
    for i, (rate, age) in enumerate(values):
        now = i * step
        samples.append(Sample(at=now, window_seconds=step * 2, evicted_bytes_per_minute=rate, lru_copy_age_seconds=age))
        samples = prune(samples, now=now, policy=policy)
        d = decide(samples, current=current, policy=policy, now=now, last_change=last_change)
        if d.action is not Action.HOLD:
            assert d.target != current
            changes.append((now, d.target, d.action))
            current, last_change = d.target, now
    return changes


@settings(max_examples=300, deadline=None)
@given(policy=policies, values=signal, start=st.integers(0, 8))
def test_never_outside_bounds_and_changes_a_cooldown_apart(policy: Policy, values: list[tuple[float, float | None]], start: int) -> None:
    changes = run(policy, values, start=start)
    forced = start < policy.min_pods or start > policy.max_pods
    inside = False
    for i, (_, target, _) in enumerate(changes):
        if policy.min_pods <= target <= policy.max_pods:
            inside = True
        if inside:
            assert policy.min_pods <= target <= policy.max_pods   # once inside, never leaves
        if i and not forced:
            assert changes[i][0] - changes[i - 1][0] >= policy.cooldown_seconds
    if not forced:
        assert all(policy.min_pods <= t <= policy.max_pods for _, t, _ in changes)


@settings(max_examples=300, deadline=None)
@given(policy=policies, values=signal, start=st.integers(1, 6))
def test_every_change_follows_its_signal(policy: Policy, values: list[tuple[float, float | None]], start: int) -> None:
    """An in-bounds UP comes right after a churn sample, a DOWN after an idle one."""
    if not policy.min_pods <= start <= policy.max_pods:
        return
    for now, _, action in run(policy, values, start=start):
        rate, age = values[int(now / 2.0)]
        if action is Action.UP:
            assert rate >= policy.up_evicted_bytes_per_minute
        else:
            assert rate <= 0 and (age is None or age >= policy.down_idle_seconds)


@settings(max_examples=200, deadline=None)
@given(
    policy=policies, hot=st.floats(1000.0, 1e9), period=st.integers(1, 2), length=st.integers(10, 200),
    start=st.integers(1, 6),
)
def test_a_signal_oscillating_faster_than_the_windows_never_scales(
    policy: Policy, hot: float, period: int, length: int, start: int,
) -> None:
    """Churn and idleness alternating every `period` samples (2 s each; the windows are >= 5 s):
    neither stays for a window, so the count never moves."""
    if not policy.min_pods <= start <= policy.max_pods:
        return
    values = [((hot, 0.0) if (i // period) % 2 == 0 else (0.0, None)) for i in range(length)]
    assert run(policy, values, start=start) == []


@settings(max_examples=100, deadline=None)
@given(policy=policies, start=st.integers(1, 6))
def test_steady_churn_climbs_to_max_and_steady_idleness_falls_to_min(policy: Policy, start: int) -> None:
    if not policy.min_pods <= start <= policy.max_pods:
        return
    hot = [(policy.up_evicted_bytes_per_minute, 0.0)] * 2000
    ups = run(policy, hot, start=start)
    assert [t for _, t, _ in ups] == list(range(start + 1, policy.max_pods + 1))
    cold = [(0.0, policy.down_idle_seconds)] * 2000
    downs = run(policy, cold, start=start)
    assert [t for _, t, _ in downs] == list(range(start - 1, policy.min_pods - 1, -1))
