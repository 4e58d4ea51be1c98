"""The scheduler's placement views of pods, built from a real Redis snapshot."""

from __future__ import annotations

from meshserve.scheduler.models import CopyState, CopyView, PodView
from meshserve.scheduler.service import SchedulerService


async def test_pod_views_show_each_pods_copies_sizes_states_and_usage(service: SchedulerService) -> None:
    live = service.live
    for pod, labels in (("a", ["rt:x", "mt:sklearn"]), ("b", ["rt:x"]), ("c", ["rt:y"])):
        await live.upsert_pod(pod_id=pod, fields={"capacity": 1000, "max_loading": 2, "labels": labels})
    await live.reserve(model_id="m1", pod_id="a", size=300, exclusive=False)
    await live.settle(model_id="m1", pod_id="a", size=250)
    await live.reserve(model_id="m2", pod_id="a", size=100, exclusive=False)  # loading
    await live.reserve(model_id="m1", pod_id="b", size=300, exclusive=False)
    await live.settle(model_id="m1", pod_id="b", size=260)
    await live.set_draining("b", True)
    await live.add_usage({"m1": 4}, at_ms=4_000_000_000_000)  # after the loads: last_used wins
    pods = {p.pod_id: p for p in await live.pods()}
    await live.remove_pod("c")  # gone between listing the pods and building the views
    copies = {(c.model_id, c.pod_id): c.since_ms for m in ("m1", "m2") for c in await live.copies(m)}

    views = await service._pod_views([pods["a"], pods["b"], pods["c"]])

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


async def test_pod_views_read_the_current_state_not_the_listed_one(service: SchedulerService) -> None:
    """The PodInfo handed in may be stale; the view follows Redis as of the snapshot."""
    live = service.live
    await live.upsert_pod(pod_id="a", fields={"capacity": 1000, "max_loading": 2, "labels": []})
    [stale] = await live.pods()
    await live.reserve(model_id="m", pod_id="a", size=400, exclusive=True)

    [view] = await service._pod_views([stale])

    assert (stale.allocated, stale.loading) == (0, 0)
    assert (view.allocated_bytes, view.loading, view.model_ids) == (400, 1, frozenset({"m"}))
