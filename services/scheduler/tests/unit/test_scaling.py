"""Copy scaling decisions: examples of each rule, and their bounds as properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.scheduler.scaling import (
    CopyChange,
    ModelLoad,
    ScalingPolicy,
    copies_missing,
    decide,
    plan_scaling,
)


def load(rate: float, copies: int, *, lo: int = 0, hi: int = 0) -> ModelLoad:
    return ModelLoad("m", rate, copies, min_copies=lo, max_copies=hi)


@pytest.mark.parametrize(
    ("model", "delta"),
    [
        pytest.param(load(2001, 1), 1, id="one-copy-over-threshold"),
        pytest.param(load(2000, 1), 0, id="at-threshold-stays"),
        pytest.param(load(6001, 3), 1, id="per-copy-rate-over"),
        pytest.param(load(9000, 3, hi=3), 0, id="capped-by-max"),
        pytest.param(load(5000, 0), 0, id="cold-model-not-scaled-here"),
        pytest.param(load(0, 0, lo=2), 2, id="missing-for-min-copies"),
        pytest.param(load(0, 1, lo=3, hi=5), 2, id="below-min-adds-all-missing"),
        pytest.param(load(100, 5, hi=3), -2, id="above-max-removes-excess"),
        pytest.param(load(100, 2), -1, id="quiet-scales-down"),
        pytest.param(load(1500, 2), 0, id="hysteresis-keeps-second-copy"),
        pytest.param(load(900, 2), -1, id="below-half-threshold-after-removal"),
        pytest.param(load(0, 1), 0, id="never-removes-the-last-copy"),
        pytest.param(load(0, 2, lo=2), 0, id="never-below-min-copies"),
    ],
)
def test_decide(model: ModelLoad, delta: int) -> None:
    change = decide(model)
    assert change.delta == delta
    assert change.model_id == "m" and change.reason


def test_pod_count_caps_scale_up() -> None:
    assert decide(load(9000, 2), pods=2).delta == 0
    assert decide(load(9000, 2), pods=3).delta == 1


def test_custom_threshold_and_hysteresis() -> None:
    policy = ScalingPolicy(threshold_rpm=100, hysteresis=1.0)
    assert decide(load(101, 1), policy=policy).delta == 1
    assert decide(load(99, 2), policy=policy).delta == -1


@pytest.mark.parametrize("bad", [{"threshold_rpm": 0}, {"hysteresis": 1.5}, {"hysteresis": -0.1}])
def test_policy_validation(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ScalingPolicy(**bad)


def test_copies_missing() -> None:
    assert copies_missing(copies=0, min_copies=2) == 2
    assert copies_missing(copies=3, min_copies=2) == 0


def test_plan_scaling_lists_changes_in_model_order() -> None:
    loads = [
        ModelLoad("b", 5000, 1),
        ModelLoad("a", 0, 0, min_copies=1),
        ModelLoad("c", 1000, 1),
    ]
    assert plan_scaling(loads) == (
        CopyChange("a", 1, "0 copies, below minCopies 1"),
        CopyChange("b", 1, "5000 req/min per copy over 1 copies > 2000"),
    )


models_st = st.builds(
    ModelLoad,
    model_id=st.just("m"),
    rate_per_minute=st.floats(0, 50_000),
    copies=st.integers(0, 10),
    min_copies=st.integers(0, 4),
    max_copies=st.integers(0, 8),
).filter(lambda m: m.max_copies == 0 or m.min_copies <= m.max_copies)


@settings(max_examples=200, deadline=None)
@given(model=models_st, pods=st.none() | st.integers(1, 10))
def test_decisions_stay_within_bounds(model: ModelLoad, pods: int | None) -> None:
    policy = ScalingPolicy()
    change = decide(model, policy=policy, pods=pods)
    after = model.copies + change.delta
    assert change.reason
    if model.copies < model.min_copies:
        assert after == model.min_copies
        return
    if model.max_copies and model.copies > model.max_copies:
        assert after == model.max_copies
        return
    assert change.delta in (-1, 0, 1)
    if change.delta == 1:
        assert model.copies >= 1
        assert model.rate_per_minute / model.copies > policy.threshold_rpm
        assert not model.max_copies or after <= model.max_copies
        assert pods is None or after <= pods
    if change.delta == -1:
        assert after >= max(model.min_copies, 1)
        # after removal the rate per copy stays under the scale-up threshold: no flapping
        assert model.rate_per_minute / after <= policy.threshold_rpm
    assert decide(model, policy=policy, pods=pods) == change
