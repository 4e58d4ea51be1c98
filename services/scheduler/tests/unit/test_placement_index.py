"""The indexed fast path (`ClusterIndex` + `place_indexed`) against the reference `place()`.

Equivalence is exact: the same Plan (pod, evictions, reason, code) on random clusters,
including after incremental updates (pods replaced, added, removed, plans applied).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshserve.scheduler.models import (
    CopyState,
    CopyView,
    EvictionPolicy,
    PlacementConfig,
    PlacementRequest,
    PodView,
)
from meshserve.scheduler.placement.index import ClusterIndex, place_indexed
from meshserve.scheduler.placement.scan import place

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = [f"m{i}" for i in range(10)]
LABELS = ["rt:a", "rt:b", "mt:x"]
POD_IDS = [f"p{i}" for i in range(10)]

copies_st = st.builds(
    CopyView,
    model_id=st.sampled_from(MODELS),
    size_bytes=st.integers(1, 40),
    state=st.sampled_from([CopyState.LOADED, CopyState.LOADED, CopyState.LOADING]),
    last_used=st.sampled_from([0.0, 10.0, 50.0, 90.0]),   # few values: ties in victim order
    hits=st.sampled_from([0.0, 1.0, 5.0]),
    in_flight=st.sampled_from([0, 0, 0, 1]),
    loaded_at=st.sampled_from([0.0, 50.0, 95.0]),
)


@st.composite
def pod_st(draw: st.DrawFn, pod_id: str) -> PodView:
    copies = draw(st.lists(copies_st, max_size=5, unique_by=lambda c: c.model_id))
    used = sum(c.size_bytes for c in copies) + draw(st.sampled_from([0, 0, 5, 10]))
    capacity = draw(st.sampled_from([used - 10, used, used + 10, used + 30, used + 60]))
    return PodView(
        pod_id,
        max(1, capacity),
        used,
        labels=frozenset(draw(st.lists(st.sampled_from(LABELS), max_size=2))),
        loading=draw(st.integers(0, 2)),
        max_loading=draw(st.integers(1, 2)),
        healthy=draw(st.sampled_from([True, True, True, False])),
        draining=draw(st.sampled_from([False, False, False, True])),
        copies=tuple(copies),
    )


@st.composite
def cluster_st(draw: st.DrawFn) -> list[PodView]:
    n = draw(st.integers(0, 10))
    return [draw(pod_st(POD_IDS[i])) for i in range(n)]


request_st = st.builds(
    PlacementRequest,
    model_id=st.sampled_from([*MODELS, "new"]),
    size_bytes=st.sampled_from([1, 5, 10, 20, 30, 45, 70, 120]),
    required_labels=st.frozensets(st.sampled_from(LABELS), max_size=2),
    exclude_pods=st.frozensets(st.sampled_from(POD_IDS), max_size=2),
)

config_st = st.builds(
    PlacementConfig,
    policy=st.sampled_from(list(EvictionPolicy)),
    min_residency_seconds=st.sampled_from([0.0, 10.0, 30.0]),
    min_copies=st.dictionaries(st.sampled_from(MODELS), st.integers(0, 2), max_size=5),
    usage_half_life_seconds=st.sampled_from([1.0, 60.0, 600.0]),
    eviction_candidates=st.sampled_from([1, 2, 16]),
    stale_after_intervals=st.sampled_from([0.0, 1.0, 6.0]),
    stale_min_seconds=st.sampled_from([0.0, 5.0, 60.0]),
)


@FAST
@given(pods=cluster_st(), requests=st.lists(request_st, min_size=1, max_size=4), cfg=config_st, now=st.sampled_from([0.0, 60.0, 100.0, 200.0]))
def test_same_plan_as_place(pods: list[PodView], requests: list[PlacementRequest], cfg: PlacementConfig, now: float) -> None:
    index = ClusterIndex(pods)
    for r in requests:
        assert place_indexed(r, index, now=now, config=cfg) == place(r, pods, now=now, config=cfg)


def _apply(pod: PodView, r: PlacementRequest, evicted: set[str], now: float) -> PodView:
    """`pod` after a plan: victims gone, the new copy loading."""
    kept = tuple(c for c in pod.copies if c.model_id not in evicted)
    new = CopyView(r.model_id, r.size_bytes, state=CopyState.LOADING, last_used=now, hits=1.0, loaded_at=now)
    return PodView(
        pod.pod_id,
        pod.capacity_bytes,
        sum(c.size_bytes for c in kept) + r.size_bytes,
        pod.labels,
        pod.loading + 1,
        pod.max_loading,
        pod.healthy,
        pod.draining,
        (*kept, new),
    )


@settings(FAST, max_examples=50)
@given(pods=cluster_st(), cfg=config_st, data=st.data())
def test_same_plan_after_incremental_updates(pods: list[PodView], cfg: PlacementConfig, data: st.DataObject) -> None:
    index = ClusterIndex(pods, warm=cfg if data.draw(st.booleans(), label="warm") else None)
    current = {p.pod_id: p for p in pods}
    now = 100.0
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        op = data.draw(st.sampled_from(["place", "place", "replace", "remove", "usage"]), label="op")
        if op == "replace":
            pid = data.draw(st.sampled_from(POD_IDS), label="pod")
            view = data.draw(pod_st(pid), label="view")
            current[pid] = view
            index.update(view)
        elif op == "remove" and current:
            pid = data.draw(st.sampled_from(sorted(current)), label="gone")
            del current[pid]
            index.remove(pid)
        elif op == "usage" and current:
            # same models, fresh usage/state: the incremental `with_usage` view
            pid = data.draw(st.sampled_from(sorted(current)), label="used")
            old = current[pid]
            copies = tuple(
                CopyView(c.model_id, c.size_bytes, state=CopyState.LOADED, last_used=now, hits=c.hits + 1, loaded_at=c.loaded_at)
                for c in old.copies
            )
            view = old.with_usage(copies, allocated_bytes=old.allocated_bytes)
            current[pid] = view
            index.update(view)
        else:
            r = data.draw(request_st, label="request")
            expected = place(r, list(current.values()), now=now, config=cfg)
            assert place_indexed(r, index, now=now, config=cfg) == expected
            if expected.pod_id is not None:
                view = _apply(current[expected.pod_id], r, {e.model_id for e in expected.evictions}, now)
                current[view.pod_id] = view
                index.update(view)
        now += data.draw(st.sampled_from([0.0, 5.0, 30.0]), label="tick")
        assert sorted(index.views(), key=lambda p: p.pod_id) == sorted(current.values(), key=lambda p: p.pod_id)
        for m in [*MODELS, "new"]:
            usable = [p for p in current.values() if p.usable]
            assert index.loaded_copies(m) == sum(m in p.loaded_model_ids for p in usable)
            assert index.holders(m) == {p.pod_id for p in usable if m in p.model_ids}
        r = data.draw(request_st, label="probe")
        assert place_indexed(r, index, now=now, config=cfg) == place(r, list(current.values()), now=now, config=cfg)


def test_index_basics() -> None:
    a = PodView("a", 100, 40, frozenset({"rt:a"}), copies=(CopyView("m1", 40),))
    b = PodView("b", 100, 0, frozenset({"rt:a", "mt:x"}))
    index = ClusterIndex([a, b])
    assert len(index) == 2 and "a" in index and index.get("b") is b
    assert index.loaded_copies("m1") == 1 and index.holders("m1") == {"a"}
    # draining: stored, but no longer counted nor offered
    index.update(PodView("a", 100, 40, frozenset({"rt:a"}), draining=True, copies=(CopyView("m1", 40),)))
    assert index.loaded_copies("m1") == 0 and index.holders("m1") == frozenset()
    plan = place_indexed(PlacementRequest("m2", 70, frozenset({"rt:a"})), index, now=0.0)
    assert plan.pod_id == "b" and plan.reason == "best fit: 30 bytes left free on b"
    index.remove("b")
    index.remove("nope")
    plan = place_indexed(PlacementRequest("m2", 70, frozenset({"rt:a"})), index, now=0.0)
    assert plan.pod_id is None and plan.reason == "no healthy pod supports rt:a"


def test_equal_deficits_across_label_groups_match_place() -> None:
    """Two label groups whose best eviction candidates tie on deficit."""
    cfg = PlacementConfig(min_residency_seconds=0.0)
    pods = [
        PodView("x", 100, 95, frozenset({"rt:a"}), copies=(CopyView("m1", 95, last_used=5.0, hits=1.0),)),
        PodView("y", 100, 95, frozenset({"rt:a", "mt:x"}), copies=(CopyView("m2", 95, last_used=1.0, hits=1.0),)),
        PodView("z", 100, 99, frozenset({"rt:a", "mt:x"}), copies=(CopyView("m3", 99, in_flight=1),)),
    ]
    r = PlacementRequest("new", 20, frozenset({"rt:a"}))
    plan = place_indexed(r, ClusterIndex(pods), now=50.0, config=cfg)
    assert plan == place(r, pods, now=50.0, config=cfg)
    assert plan.pod_id == "y"


def test_smallest_deficit_wins_across_label_groups() -> None:
    """The pod with the most free bytes is in the label group indexed last."""
    cfg = PlacementConfig(min_residency_seconds=0.0, eviction_candidates=1)
    pods = [
        PodView("x", 100, 98, frozenset({"rt:a"}), copies=(CopyView("m1", 98, hits=1.0),)),
        PodView("y", 100, 90, frozenset({"rt:a", "mt:x"}), copies=(CopyView("m2", 90, hits=9.0),)),
    ]
    r = PlacementRequest("new", 20, frozenset({"rt:a"}))
    plan = place_indexed(r, ClusterIndex(pods), now=50.0, config=cfg)
    assert plan == place(r, pods, now=50.0, config=cfg)
    assert plan.pod_id == "y" and "(10 needed; cheapest victims of 1 candidate pod)" in plan.reason
