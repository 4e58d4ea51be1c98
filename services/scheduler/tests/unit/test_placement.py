"""Example-based tests of placement, one rule at a time (the properties live in
test_placement_props.py)."""

from __future__ import annotations

import dataclasses

import pytest

from meshserve.scheduler.models import (
    ALL_BUSY_LOADING,
    NO_COMPATIBLE_RUNTIME,
    NO_ROOM,
    TOO_BIG,
    CopyState,
    CopyView,
    EvictionPolicy,
    PlacementConfig,
    PlacementRequest,
    Plan,
    PodView,
)
from meshserve.scheduler.placement.scan import age_hits, is_protected, place

NOW = 10_000.0
LRU = PlacementConfig(policy=EvictionPolicy.LRU, min_residency_seconds=0.0)
# the score order alone (these examples use raw counts long before NOW, which staleness
# would drop first; staleness has its own tests below)
UW = PlacementConfig(policy=EvictionPolicy.USAGE_WEIGHTED, min_residency_seconds=0.0, stale_after_intervals=0.0)


def pod(
    pod_id: str,
    *,
    capacity: int = 100,
    copies: tuple[CopyView, ...] = (),
    extra: int = 0,
    **kw: object,
) -> PodView:
    """A pod whose allocation is its copies plus `extra` reserved bytes."""
    used = sum(c.size_bytes for c in copies) + extra
    return PodView(pod_id, capacity, used, copies=copies, **kw)  # type: ignore[arg-type]


def copy(model_id: str, size: int, **kw: object) -> CopyView:
    kw.setdefault("loaded_at", 0.0)
    return CopyView(model_id, size, **kw)  # type: ignore[arg-type]


def req(model_id: str = "m", size: int = 10, **kw: object) -> PlacementRequest:
    return PlacementRequest(model_id, size, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- best fit


def test_best_fit_picks_the_pod_left_with_least_free_space() -> None:
    pods = [pod("a", extra=50), pod("b", extra=85), pod("c", extra=95)]
    plan = place(req(size=10), pods, now=NOW)
    assert plan.pod_id == "b"
    assert plan.evictions == ()
    assert plan.reason == "best fit: 5 bytes left free on b"
    assert plan.code == ""


def test_best_fit_ties_go_to_fewer_loads_then_pod_id() -> None:
    pods = [pod("b", extra=50, max_loading=3), pod("a", extra=50, loading=1, max_loading=3)]
    assert place(req(), pods, now=NOW).pod_id == "b"
    pods = [pod("b", extra=50), pod("a", extra=50)]
    assert place(req(), pods, now=NOW).pod_id == "a"


def test_no_eviction_when_some_pod_has_room() -> None:
    full = pod("a", copies=(copy("x", 100),))
    roomy = pod("b", extra=0)
    plan = place(req(size=60), [full, roomy], now=NOW, config=UW)
    assert plan.pod_id == "b" and plan.evictions == ()


def test_never_two_copies_of_a_model_on_one_pod() -> None:
    holder = pod("a", copies=(copy("m", 10),))
    other = pod("b", extra=80)
    assert place(req("m"), [holder, other], now=NOW).pod_id == "b"
    plan = place(req("m"), [holder], now=NOW)
    assert plan.pod_id is None and plan.code == NO_ROOM
    assert "already hold a copy" in plan.reason


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"healthy": False}, id="unhealthy"),
        pytest.param({"draining": True}, id="draining"),
        pytest.param({"labels": frozenset({"mt:onnx"})}, id="incompatible"),
    ],
)
def test_unusable_pods_are_skipped(bad: dict[str, object]) -> None:
    labels = frozenset({"mt:sklearn"})
    good = pod("z", extra=90, labels=labels)
    kw: dict[str, object] = {"labels": labels, **bad}
    better = pod("a", extra=0, **kw)
    plan = place(req(required_labels=labels), [better, good], now=NOW)
    assert plan.pod_id == "z"


def test_excluded_pods_are_skipped() -> None:
    plan = place(req(exclude_pods=frozenset({"a"})), [pod("a"), pod("b")], now=NOW)
    assert plan.pod_id == "b"


def test_pods_at_max_loading_are_skipped() -> None:
    busy = pod("a", extra=90, loading=2, max_loading=2)
    idle = pod("b", extra=0)
    assert place(req(), [busy, idle], now=NOW).pod_id == "b"


def test_labels_must_all_be_present() -> None:
    need = frozenset({"rt:mlserver", "mt:sklearn"})
    partial = pod("a", labels=frozenset({"mt:sklearn"}))
    full = pod("b", labels=need | {"pv:v2"})
    assert place(req(required_labels=need), [partial, full], now=NOW).pod_id == "b"


# ------------------------------------------------------------------------ failure codes


def test_no_compatible_runtime() -> None:
    plan = place(req(required_labels=frozenset({"mt:onnx"})), [pod("a")], now=NOW)
    assert plan == Plan(None, reason=plan.reason, code=NO_COMPATIBLE_RUNTIME)
    assert "mt:onnx" in plan.reason


def test_no_pods_at_all_is_no_compatible_runtime() -> None:
    plan = place(req(), [], now=NOW)
    assert plan.code == NO_COMPATIBLE_RUNTIME and plan.reason


def test_too_big_for_any_pod() -> None:
    plan = place(req(size=101), [pod("a"), pod("b", capacity=50)], now=NOW)
    assert plan.pod_id is None and plan.code == TOO_BIG
    assert "101" in plan.reason and "100" in plan.reason


def test_all_candidates_busy_loading() -> None:
    pods = [pod("a", loading=1), pod("b", loading=2, max_loading=2)]
    plan = place(req(), pods, now=NOW)
    assert plan.pod_id is None and plan.code == ALL_BUSY_LOADING and plan.reason


def test_no_room_when_every_copy_is_protected() -> None:
    pods = [pod("a", copies=(copy("x", 100, in_flight=1),)), pod("b", copies=(copy("y", 100, state=CopyState.LOADING),))]
    plan = place(req(), pods, now=NOW, config=UW)
    assert plan.pod_id is None and plan.code == NO_ROOM
    assert "1 serving requests" in plan.reason and "1 loading" in plan.reason


def test_no_room_when_reserved_bytes_cannot_be_evicted() -> None:
    plan = place(req(size=30), [pod("a", copies=(copy("x", 20),), extra=75)], now=NOW, config=UW)
    assert plan.code == NO_ROOM


# ----------------------------------------------------------------------------- eviction


def test_lru_evicts_least_recently_used_first() -> None:
    copies = (copy("old", 30, last_used=1.0, hits=1000), copy("new", 30, last_used=9.0, hits=1), copy("mid", 30, last_used=5.0))
    plan = place(req(size=20), [pod("a", copies=copies)], now=NOW, config=LRU)
    assert [e.model_id for e in plan.evictions] == ["old"]
    assert plan.reason.startswith("evicted 1 copy (lru) on a")


def test_usage_weighted_evicts_least_used_per_byte() -> None:
    # same recency: the big rarely used copy goes, not the small busy one
    copies = (copy("busy", 20, hits=100, last_used=5.0), copy("rare", 60, hits=2, last_used=5.0), copy("x", 15, hits=50, last_used=5.0))
    plan = place(req(size=30), [pod("a", copies=copies)], now=NOW, config=UW)
    assert [e.model_id for e in plan.evictions] == ["rare"]
    assert "(usage-weighted)" in plan.reason


def test_usage_weighted_ages_by_last_use() -> None:
    # equal size; "stale" has 4x the hits but was last used 3 half-lives earlier (1/8 worth)
    half = 100.0
    cfg = PlacementConfig(min_residency_seconds=0.0, usage_half_life_seconds=half)
    copies = (copy("stale", 50, hits=40, last_used=0.0), copy("fresh", 50, hits=10, last_used=3 * half))
    plan = place(req(size=50), [pod("a", copies=copies)], now=NOW, config=cfg)
    assert [e.model_id for e in plan.evictions] == ["stale"]


def test_eviction_stops_as_soon_as_the_model_fits() -> None:
    copies = tuple(copy(f"c{i}", 20, last_used=float(i)) for i in range(5))
    plan = place(req(size=45), [pod("a", copies=copies)], now=NOW, config=LRU)
    assert [e.model_id for e in plan.evictions] == ["c0", "c1", "c2"]
    assert plan.evicted_bytes == 60
    assert plan.reason.startswith("evicted 3 copies (lru) on a freeing 60 bytes (45 needed")


def test_eviction_picks_the_pod_where_fewest_bytes_must_go() -> None:
    a = pod("a", copies=(copy("a1", 90, last_used=0.0),))           # must free 40
    b = pod("b", copies=(copy("b1", 70, last_used=9.0),))           # must free 20
    one = dataclasses.replace(LRU, eviction_candidates=1)
    plan = place(req(size=50), [a, b], now=NOW, config=one)
    assert plan.pod_id == "b" and [e.model_id for e in plan.evictions] == ["b1"]


def test_equal_deficits_go_to_the_cheapest_victims() -> None:
    a = pod("a", copies=(copy("a1", 90, last_used=5.0),))
    b = pod("b", copies=(copy("b1", 90, last_used=2.0),))
    plan = place(req(size=20), [a, b], now=NOW, config=LRU)
    assert plan.pod_id == "b"


def test_eviction_candidates_prefer_cheaper_victims_over_a_smaller_deficit() -> None:
    a = pod("a", copies=(copy("a1", 90, last_used=0.0),))           # must free 40, oldest
    b = pod("b", copies=(copy("b1", 70, last_used=9.0),))           # must free 20
    cfg = PlacementConfig(policy=EvictionPolicy.LRU, min_residency_seconds=0.0)
    plan = place(req(size=50), [a, b], now=NOW, config=cfg)
    assert plan.pod_id == "a" and [e.model_id for e in plan.evictions] == ["a1"]
    assert "(40 needed; cheapest victims of 2 candidate pods)" in plan.reason
    # equal worst victims: the smaller deficit still decides
    c = pod("c", copies=(copy("c1", 70, last_used=0.0),))
    assert place(req(size=50), [a, c], now=NOW, config=cfg).pod_id == "c"
    # one candidate: the pod where the fewest bytes must go, whatever its victims cost
    one = dataclasses.replace(cfg, eviction_candidates=1)
    plan = place(req(size=50), [a, b], now=NOW, config=one)
    assert plan.pod_id == "b" and "cheapest victims of 1 candidate pod)" in plan.reason


def test_eviction_candidates_stop_after_enough_pods_can_free_room() -> None:
    # deficits 10 (d1), 20 (d2), 30 (d3); the cheapest victim is on the pod with the largest deficit
    pods = [
        pod("d1", copies=(copy("x1", 60, last_used=9.0),), extra=0),
        pod("d2", copies=(copy("x2", 70, last_used=8.0),), extra=0),
        pod("d3", copies=(copy("x3", 80, last_used=1.0),), extra=0),
    ]
    base = PlacementConfig(policy=EvictionPolicy.LRU, min_residency_seconds=0.0)
    picks = [
        place(req(size=50), pods, now=NOW, config=dataclasses.replace(base, eviction_candidates=n)).pod_id
        for n in (1, 2, 3)
    ]
    assert picks == ["d1", "d2", "d3"]


def test_stale_copies_are_evicted_before_cheaper_ones() -> None:
    # "was-hot": 1000 aged hits, but unused for far more than 6 of its expected gaps
    # (half-life 600 s: one request every ~0.87 s); "cold": 1 hit, used just now
    half = 600.0
    was_hot = copy("was-hot", 50, last_used=NOW - 100.0, hits=1000.0)
    cold = copy("cold", 50, last_used=NOW, hits=1.0)
    cfg = PlacementConfig(min_residency_seconds=0.0, usage_half_life_seconds=half)
    assert was_hot.stale_at(half, 6.0, 60.0) < NOW < cold.stale_at(half, 6.0, 60.0)
    assert was_hot.usage_score(half) > cold.usage_score(half)   # aging alone keeps it
    plan = place(req(size=40), [pod("a", copies=(was_hot, cold))], now=NOW, config=cfg)
    assert [e.model_id for e in plan.evictions] == ["was-hot"]
    assert "1 gone cold" in plan.reason
    off = dataclasses.replace(cfg, stale_after_intervals=0.0)
    plan = place(req(size=40), [pod("a", copies=(was_hot, cold))], now=NOW, config=off)
    assert [e.model_id for e in plan.evictions] == ["cold"]
    # a stale copy is still protected while it serves requests
    busy = dataclasses.replace(was_hot, in_flight=1)
    plan = place(req(size=40), [pod("a", copies=(busy, cold))], now=NOW, config=cfg)
    assert [e.model_id for e in plan.evictions] == ["cold"]


def test_a_busy_model_is_not_stale_before_stale_min_seconds() -> None:
    # 1000 aged hits: 6 expected gaps are ~5 s, but usage arrives in batches, so the
    # floor (60 s by default) keeps it from counting as cold 30 s after its last report
    half = 600.0
    busy = copy("busy", 50, last_used=NOW - 30.0, hits=1000.0)
    cold = copy("cold", 50, last_used=NOW, hits=1.0)
    assert busy.stale_at(half, 6.0) < NOW < busy.stale_at(half, 6.0, 60.0)
    plan = place(req(size=40), [pod("a", copies=(busy, cold))], now=NOW, config=PlacementConfig(min_residency_seconds=0.0))
    assert [e.model_id for e in plan.evictions] == ["cold"]
    no_floor = PlacementConfig(min_residency_seconds=0.0, stale_min_seconds=0.0)
    plan = place(req(size=40), [pod("a", copies=(busy, cold))], now=NOW, config=no_floor)
    assert [e.model_id for e in plan.evictions] == ["busy"]


def test_stale_pods_win_among_candidates() -> None:
    # b must free more, but only a stale copy: its worst victim is cheapest of all
    a = pod("a", copies=(copy("a1", 80, last_used=NOW, hits=1.0),), extra=0)
    b = pod("b", copies=(copy("b1", 90, last_used=NOW - 100.0, hits=1000.0),), extra=0)
    cfg = PlacementConfig(min_residency_seconds=0.0)
    assert place(req(size=50), [a, b], now=NOW, config=cfg).pod_id == "b"


def test_evictions_are_on_the_chosen_pod_and_fit() -> None:
    pods = [pod("a", copies=(copy("x", 40), copy("y", 40)), extra=10), pod("b", copies=(copy("z", 95),))]
    plan = place(req(size=50), pods, now=NOW, config=UW)
    assert plan.ok
    chosen = next(p for p in pods if p.pod_id == plan.pod_id)
    assert {e.pod_id for e in plan.evictions} == {chosen.pod_id}
    assert chosen.allocated_bytes - plan.evicted_bytes + 50 <= chosen.capacity_bytes


# --------------------------------------------------------------------------- protection


def test_loading_copies_are_never_evicted() -> None:
    copies = (copy("loading", 50, state=CopyState.LOADING, last_used=0.0), copy("ok", 50, last_used=9.0))
    plan = place(req(size=40), [pod("a", copies=copies)], now=NOW, config=LRU)
    assert [e.model_id for e in plan.evictions] == ["ok"]


def test_copies_with_requests_in_flight_are_never_evicted() -> None:
    copies = (copy("serving", 50, in_flight=3, last_used=0.0), copy("idle", 50, last_used=9.0))
    plan = place(req(size=40), [pod("a", copies=copies)], now=NOW, config=LRU)
    assert [e.model_id for e in plan.evictions] == ["idle"]


def test_recently_loaded_copies_are_protected() -> None:
    cfg = PlacementConfig(policy=EvictionPolicy.LRU, min_residency_seconds=30.0)
    copies = (copy("fresh", 50, loaded_at=NOW - 10, last_used=NOW - 10), copy("settled", 50, loaded_at=NOW - 31, last_used=NOW - 5))
    plan = place(req(size=40), [pod("a", copies=copies)], now=NOW, config=cfg)
    assert [e.model_id for e in plan.evictions] == ["settled"]
    only_fresh = (copy("fresh", 100, loaded_at=NOW - 10),)
    plan = place(req(size=40), [pod("a", copies=only_fresh)], now=NOW, config=cfg)
    assert plan.code == NO_ROOM and "1 loaded too recently" in plan.reason


def test_last_copy_of_a_min_copies_model_is_never_evicted() -> None:
    cfg = PlacementConfig(policy=EvictionPolicy.LRU, min_residency_seconds=0.0, min_copies={"keep": 1})
    copies = (copy("keep", 50, last_used=0.0), copy("other", 50, last_used=9.0))
    plan = place(req(size=40), [pod("a", copies=copies)], now=NOW, config=cfg)
    assert [e.model_id for e in plan.evictions] == ["other"]


def test_a_second_copy_of_a_min_copies_model_may_go() -> None:
    cfg = PlacementConfig(policy=EvictionPolicy.LRU, min_residency_seconds=0.0, min_copies={"keep": 1})
    a = pod("a", copies=(copy("keep", 50, last_used=0.0), copy("other", 50, last_used=9.0)))
    b = pod("b", copies=(copy("keep", 100),), labels=frozenset({"elsewhere"}))   # counted, not a candidate
    plan = place(req(size=40), [a, b], now=NOW, config=cfg)
    assert [e.model_id for e in plan.evictions] == ["keep"]


def test_copies_on_unusable_pods_do_not_count_for_min_copies() -> None:
    cfg = PlacementConfig(policy=EvictionPolicy.LRU, min_residency_seconds=0.0, min_copies={"keep": 1})
    a = pod("a", copies=(copy("keep", 50, last_used=0.0), copy("other", 50, last_used=9.0)))
    dead = pod("b", copies=(copy("keep", 100),), healthy=False)
    plan = place(req(size=40), [a, dead], now=NOW, config=cfg)
    assert [e.model_id for e in plan.evictions] == ["other"]


def test_min_copies_zero_does_not_protect() -> None:
    cfg = PlacementConfig(policy=EvictionPolicy.LRU, min_residency_seconds=0.0, min_copies={"x": 0})
    plan = place(req(size=40), [pod("a", copies=(copy("x", 100),))], now=NOW, config=cfg)
    assert [e.model_id for e in plan.evictions] == ["x"]


def test_is_protected_matches_the_rules() -> None:
    cfg = PlacementConfig(min_residency_seconds=30.0, min_copies={"keep": 1})
    pods = [pod("a", copies=(copy("keep", 10), copy("x", 10)))]
    assert is_protected(copy("keep", 10), now=NOW, config=cfg, pods=pods)
    assert not is_protected(copy("x", 10), now=NOW, config=cfg, pods=pods)
    assert is_protected(copy("x", 10, loaded_at=NOW - 1), now=NOW, config=cfg, pods=pods)


# ------------------------------------------------------------------------------- misc


def test_same_input_same_plan_whatever_the_pod_order() -> None:
    pods = [
        pod(f"p{i}", copies=tuple(copy(f"m{i}-{j}", 10, hits=float(j), last_used=float(i + j)) for j in range(9)), extra=i % 3)
        for i in range(6)
    ]
    first = place(req(size=25), pods, now=NOW, config=UW)
    assert first.ok and first.evictions
    assert place(req(size=25), list(reversed(pods)), now=NOW, config=UW) == first
    assert place(req(size=25), pods, now=NOW, config=UW) == first


def test_default_config_is_usage_weighted() -> None:
    plan = place(req(size=50), [pod("a", copies=(copy("x", 100),))], now=NOW)
    assert "(usage-weighted)" in plan.reason


def test_age_hits_halves_per_half_life() -> None:
    assert age_hits(hits=8.0, last_used=0.0, now=200.0, new=1.0, half_life=100.0) == pytest.approx(3.0)
    assert age_hits(hits=8.0, last_used=50.0, now=10.0, new=0.0, half_life=100.0) == 8.0


def test_half_life_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PlacementConfig(usage_half_life_seconds=0.0)


def test_with_usage_keeps_the_model_index() -> None:
    view = pod("a", copies=(copy("x", 10), copy("y", 10)))
    assert view.model_ids == {"x", "y"}
    newer = view.with_usage((copy("x", 10, hits=5), copy("y", 10)), allocated_bytes=20)
    assert newer.model_ids == {"x", "y"} and newer.copies[0].hits == 5
    with pytest.raises(ValueError):
        view.with_usage((copy("x", 10),), allocated_bytes=10)
