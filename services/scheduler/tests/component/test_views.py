"""Placement's views of pods: built from a real Redis snapshot, and kept between decisions
(`ClusterViews`), read again only where a pod's view version moved."""

from __future__ import annotations

import asyncio

from meshserve.scheduler.models import (
    CopyState,
    CopyView,
    EvictionPolicy,
    PlacementConfig,
    PlacementRequest,
    PodView,
)
from meshserve.scheduler.placement.index import place_indexed
from meshserve.scheduler.placement.views import ClusterViews, pod_views
from meshserve.scheduler.store.live import LiveState, now_ms

TIMEOUT = 30.0


async def _pod(live: LiveState, pod: str, **fields: object) -> None:
    await live.upsert_pod(pod_id=pod, fields={
        "capacity": 1000, "max_loading": 2, "labels": [], "heartbeat_ms": now_ms(), **fields,
    })


async def _loaded(live: LiveState, model: str, pod: str, size: int) -> None:
    assert (await live.reserve(model_id=model, pod_id=pod, size=size, exclusive=False))[0]
    assert await live.settle(model_id=model, pod_id=pod, size=size)


async def test_pod_views_show_each_pods_copies_sizes_states_and_usage(live: LiveState) -> None:
    for pod, labels in (("a", ["rt:x", "mt:sklearn"]), ("b", ["rt:x"]), ("c", ["rt:y"])):
        await live.upsert_pod(pod_id=pod, fields={"capacity": 1000, "max_loading": 2, "labels": labels})
    await live.reserve(model_id="m1", pod_id="a", size=300, exclusive=False)
    await live.settle(model_id="m1", pod_id="a", size=250)
    await live.reserve(model_id="m2", pod_id="a", size=100, exclusive=False)  # loading
    await live.reserve(model_id="m1", pod_id="b", size=300, exclusive=False)
    await live.settle(model_id="m1", pod_id="b", size=260)
    await live.set_draining("b", True)
    await live.add_usage({"m1": 4}, at_ms=4_000_000_000_000)  # after the loads: last_used wins
    await live.remove_pod("c")  # gone before the snapshot: left out
    copies = {(c.model_id, c.pod_id): c.since_ms for m in ("m1", "m2") for c in await live.copies(m)}

    views = [view for _, view in pod_views(await live.placement_snapshot(["a", "b", "c"]))]

    assert views == [
        PodView(
            pod_id="a",
            capacity_bytes=1000,
            allocated_bytes=350,
            labels=frozenset({"rt:x", "mt:sklearn"}),
            loading=1,
            max_loading=2,
            copies=(
                CopyView("m1", 250, CopyState.LOADED, last_used=4_000_000_000.0, hits=4.0,
                         loaded_at=copies["m1", "a"] / 1000),
                CopyView("m2", 100, CopyState.LOADING, last_used=copies["m2", "a"] / 1000, hits=0.0,
                         loaded_at=copies["m2", "a"] / 1000),
            ),
        ),
        PodView(
            pod_id="b",
            capacity_bytes=1000,
            allocated_bytes=260,
            labels=frozenset({"rt:x"}),
            loading=0,
            max_loading=2,
            draining=True,
            copies=(
                CopyView("m1", 260, CopyState.LOADED, last_used=4_000_000_000.0, hits=4.0,
                         loaded_at=copies["m1", "b"] / 1000),
            ),
        ),
    ]


async def _versions(live: LiveState) -> dict[str, int]:
    """The heads hash's versions, checked against the pods' own hashes."""
    heads = await live.pod_heads()
    pods = {p.pod_id: p for p in await live.pods()}
    assert heads == {p: (info.view_version, info.heartbeat_ms) for p, info in pods.items()}
    return {pod: version for pod, (version, _) in heads.items()}


async def test_every_change_placement_sees_gives_a_pod_a_new_view_version(live: LiveState) -> None:
    await _pod(live, "a")
    await _pod(live, "b")
    seen = set((await _versions(live)).values())
    assert len(seen) == 2

    async def moved(pod: str) -> bool:
        version = (await _versions(live))[pod]
        new = version not in seen
        seen.add(version)
        return new

    await _pod(live, "a", used=55)                  # a heartbeat: its clock and memory reading only
    assert not await moved("a")
    assert (await live.reserve(model_id="m", pod_id="a", size=10, exclusive=False))[0]
    assert await moved("a") and not await moved("b")
    assert await live.settle(model_id="m", pod_id="a", size=12)
    assert await moved("a")
    assert await live.release(model_id="m", pod_id="a")
    assert await moved("a")
    assert not await live.release(model_id="m", pod_id="a")   # nothing there: nothing changed
    assert not await moved("a")
    await live.redis.delete(live.k_released("a"))          # past the grace after the release
    assert await live.adopt(model_id="m", pod_id="a", size=12)
    assert await moved("a")
    await live.set_draining("a", True)
    assert await moved("a")
    for fields in ({"labels": ["rt:z"]}, {"capacity": 2000}, {"max_loading": 3}, {"grpc_address": "x:1"}):
        await _pod(live, "a", **fields)
        assert await moved("a"), fields
    # removed and registered again: a version it never had (a held view is never mistaken for it)
    await live.remove_pod("a")
    assert "a" not in await _versions(live)
    await _pod(live, "a")
    assert await moved("a")


async def test_cluster_views_read_again_only_what_moved(live: LiveState, redis_url: str, prefix: str) -> None:
    other = LiveState(redis_url, prefix=prefix)   # another scheduler replica
    try:
        for pod in ("a", "b", "c"):
            await _pod(live, pod)
        await _pod(live, "dead", heartbeat_ms=now_ms() - 3_600_000)
        views = ClusterViews(live, pod_timeout_seconds=TIMEOUT)
        await views.refresh()
        assert [p.pod_id for p in views.pods(alive=False)] == ["a", "b", "c", "dead"]
        assert [p.pod_id for p in views.pods(alive=True)] == ["a", "b", "c"]
        assert sorted(p.pod_id for p in views.index.views()) == ["a", "b", "c"]   # the live ones
        before = {p: views.index.get(p) for p in ("a", "b", "c")}

        await _loaded(other, "m", "a", 100)          # another replica changes a
        await _pod(other, "b", used=1)               # b only heartbeats
        await other.remove_pod("c")
        await _pod(other, "dead")                    # back to life
        await views.refresh()
        a = views.index.get("a")
        assert a is not None and a is not before["a"] and a.allocated_bytes == 100 and a.model_ids == {"m"}
        assert views.index.get("b") is before["b"]  # not read again
        assert "c" not in views.index and views.info("c") is None
        assert "dead" in views.index and [p.pod_id for p in views.pods(alive=True)] == ["a", "b", "dead"]
        plan = place_indexed(PlacementRequest(model_id="n", size_bytes=950), views.index, now=0)
        assert plan.pod_id in {"b", "dead"}        # a has 900 bytes free now: not a best fit
    finally:
        await other.close()


async def test_a_held_view_ranks_victims_on_old_usage_until_it_is_read_again(live: LiveState) -> None:
    """Usage moves without a new view version: the service reads the chosen pod again
    before it evicts (service.place_and_load), which is what this shows is needed."""
    await _pod(live, "a")
    await _loaded(live, "hot", "a", 500)
    await _loaded(live, "cold", "a", 500)
    t = now_ms()
    await live.add_usage({"hot": 1, "cold": 50}, at_ms=t)
    views = ClusterViews(live, pod_timeout_seconds=TIMEOUT)
    await views.refresh()
    await live.add_usage({"hot": 5_000}, at_ms=t + 1_000)   # "hot" becomes the busy one
    config = PlacementConfig(policy=EvictionPolicy.USAGE_WEIGHTED, min_residency_seconds=0)
    request = PlacementRequest(model_id="new", size_bytes=400)
    stale = place_indexed(request, views.index, now=t / 1000 + 2, config=config)
    await views.refresh()                                     # no version moved: same views
    assert place_indexed(request, views.index, now=t / 1000 + 2, config=config) == stale
    await views.reread({ev.pod_id for ev in stale.evictions})
    fresh = place_indexed(request, views.index, now=t / 1000 + 2, config=config)
    assert [ev.model_id for ev in stale.evictions] == ["hot"]
    assert [ev.model_id for ev in fresh.evictions] == ["cold"]


async def test_concurrent_refreshes_share_reads_and_each_sees_changes_made_before_it(
    live: LiveState, redis_url: str, prefix: str
) -> None:
    """A burst of decisions (EnsureLoaded calls at once) costs at most two reads of the heads,
    and none of them decides on a read older than its call."""
    other = LiveState(redis_url, prefix=prefix)
    try:
        for pod in ("a", "b"):
            await _pod(live, pod)
        views = ClusterViews(live, pod_timeout_seconds=TIMEOUT)
        await views.refresh()
        reads = views.reads
        first = asyncio.ensure_future(views.refresh())     # a read in flight ...
        await _loaded(other, "m", "a", 100)                 # ... a change by another replica ...
        burst = [asyncio.ensure_future(views.refresh()) for _ in range(50)]   # ... then 50 callers
        await asyncio.gather(first, *burst)
        assert views.reads - reads <= 2
        a = views.index.get("a")
        assert a is not None and a.model_ids == {"m"} and a.allocated_bytes == 100
    finally:
        await other.close()
