"""LiveState's Lua scripts against a real Redis: atomic memory accounting."""

from __future__ import annotations

import asyncio
import random

from meshserve.scheduler.store.live import RELEASED_GRACE_MS, LiveState

CAPACITY = 1_000


async def _pods(live: LiveState, n: int, *, max_loading: int = 100) -> list[str]:
    ids = [f"pod-{i}" for i in range(n)]
    for pod in ids:
        await live.upsert_pod(pod_id=pod, fields={"capacity": CAPACITY, "max_loading": max_loading, "labels": []})
    return ids


async def test_reserve_settle_release_keeps_allocation_exact(live: LiveState) -> None:
    [pod] = await _pods(live, 1)
    assert await live.reserve(model_id="m", pod_id=pod, size=300, exclusive=True) == (True, "ok")
    assert (await live.pod(pod)).allocated == 300  # type: ignore[union-attr]
    assert await live.settle(model_id="m", pod_id=pod, size=250)
    info = await live.pod(pod)
    assert info is not None and (info.allocated, info.loading) == (250, 0)
    assert [c.state for c in await live.copies("m")] == ["loaded"]
    assert await live.release(model_id="m", pod_id=pod)
    info = await live.pod(pod)
    assert info is not None and (info.allocated, info.loading) == (0, 0)
    assert await live.copies("m") == []


async def test_a_released_copy_is_not_adopted_back_from_a_late_report(live: LiveState) -> None:
    """A drain or eviction releases a copy, then the pod unloads it; a heartbeat sent before
    the unload finished still lists it and must not bring it back (for RELEASED_GRACE_MS)."""
    [pod] = await _pods(live, 1)
    assert (await live.reserve(model_id="m", pod_id=pod, size=300, exclusive=True))[0]
    assert await live.settle(model_id="m", pod_id=pod, size=300)
    assert await live.release(model_id="m", pod_id=pod)
    assert not await live.adopt(model_id="m", pod_id=pod, size=300)          # the late report
    assert await live.copies("m") == [] and (await live.pod(pod)).allocated == 0  # type: ignore[union-attr]
    assert await live.adopt(model_id="other", pod_id=pod, size=50)           # others are adopted
    assert 0 < await live.redis.pttl(live.k_released(pod)) <= RELEASED_GRACE_MS
    await live.redis.delete(live.k_released(pod))                            # the grace is over
    assert await live.adopt(model_id="m", pod_id=pod, size=300)              # it really is there
    assert [c.pod_id for c in await live.copies("m")] == [pod]


async def test_exclusive_reservation_refuses_a_second_first_copy(live: LiveState) -> None:
    a, b = await _pods(live, 2)
    assert (await live.reserve(model_id="m", pod_id=a, size=10, exclusive=True))[0]
    assert await live.reserve(model_id="m", pod_id=b, size=10, exclusive=True) == (False, "exists")
    assert await live.reserve(model_id="m", pod_id=a, size=10, exclusive=False) == (False, "exists-on-pod")
    assert (await live.reserve(model_id="m", pod_id=b, size=10, exclusive=False))[0]


async def test_loading_limit_and_capacity_are_enforced(live: LiveState) -> None:
    [pod] = await _pods(live, 1, max_loading=1)
    assert (await live.reserve(model_id="a", pod_id=pod, size=100, exclusive=True))[0]
    assert await live.reserve(model_id="b", pod_id=pod, size=100, exclusive=True) == (False, "busy")
    await live.settle(model_id="a", pod_id=pod, size=100)
    assert await live.reserve(model_id="c", pod_id=pod, size=CAPACITY, exclusive=True) == (False, "no-room")


async def test_settle_after_release_is_refused(live: LiveState) -> None:
    [pod] = await _pods(live, 1)
    await live.reserve(model_id="m", pod_id=pod, size=10, exclusive=True)
    await live.release(model_id="m", pod_id=pod)
    assert not await live.settle(model_id="m", pod_id=pod, size=10)
    assert (await live.pod(pod)).allocated == 0  # type: ignore[union-attr]


async def test_concurrent_clients_never_overcommit_or_double_load(redis_url: str, prefix: str) -> None:
    """Two independent clients (as two scheduler replicas) reserve 200 models on tight pods."""
    replicas = [LiveState(redis_url, prefix=prefix), LiveState(redis_url, prefix=prefix)]
    try:
        pods = await _pods(replicas[0], 4)
        rng = random.Random(7)
        models = [f"m{i}" for i in range(200)]
        sizes = {m: rng.randint(20, 120) for m in models}

        async def place(replica: LiveState, model: str) -> str | None:
            for pod in rng.sample(pods, len(pods)):
                ok, _ = await replica.reserve(model_id=model, pod_id=pod, size=sizes[model], exclusive=True)
                if ok:
                    await replica.settle(model_id=model, pod_id=pod, size=sizes[model])
                    return pod
            return None

        # every model is attempted by both replicas at once
        await asyncio.gather(*[place(r, m) for m in models for r in replicas])
        total = 0
        for pod in pods:
            info = await replicas[0].pod(pod)
            assert info is not None
            held = await replicas[0].pod_allocations(pod)
            assert info.allocated == sum(held.values()) <= CAPACITY
            total += info.allocated
        for model in models:
            assert len(await replicas[0].copies(model)) <= 1
        assert total > 0
    finally:
        keys = [k async for k in replicas[0].redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await replicas[0].redis.delete(*keys)
        for r in replicas:
            await r.close()


async def test_remove_pod_drops_its_copies(live: LiveState) -> None:
    a, b = await _pods(live, 2)
    for pod in (a, b):
        await live.reserve(model_id="m", pod_id=pod, size=10, exclusive=False)
        await live.settle(model_id="m", pod_id=pod, size=10)
    assert sorted(await live.remove_pod(a)) == ["m"]
    assert [c.pod_id for c in await live.copies("m")] == [b]
    assert await live.pod(a) is None


async def test_placement_snapshot_reads_pods_allocations_copies_and_usage(live: LiveState) -> None:
    a, b, gone = await _pods(live, 3)
    await live.reserve(model_id="m1", pod_id=a, size=100, exclusive=False)
    await live.settle(model_id="m1", pod_id=a, size=120)
    await live.reserve(model_id="m2", pod_id=a, size=50, exclusive=False)  # still loading
    await live.reserve(model_id="m1", pod_id=b, size=100, exclusive=False)
    await live.settle(model_id="m1", pod_id=b, size=110)
    await live.reserve(model_id="m3", pod_id=gone, size=10, exclusive=False)
    await live.remove_pod(gone)
    await live.add_usage({"m1": 7}, at_ms=1_000_000)

    snap = await live.placement_snapshot([b, gone, a, "never-registered"])

    assert [s.pod.pod_id for s in snap.pods] == [b, a]  # order asked, gone pods left out
    by_id = {s.pod.pod_id: s for s in snap.pods}
    assert by_id[a].allocations == {"m1": 120, "m2": 50}
    assert (by_id[a].pod.allocated, by_id[a].pod.loading, by_id[a].pod.capacity) == (170, 1, CAPACITY)
    assert {m: c.state for m, c in by_id[a].copies.items()} == {"m1": "loaded", "m2": "loading"}
    assert all(c.pod_id == a and c.since_ms > 0 for c in by_id[a].copies.values())
    assert by_id[b].allocations == {"m1": 110}
    assert {m: c.state for m, c in by_id[b].copies.items()} == {"m1": "loaded"}
    # usage as usage_many reads it: only models with usage, only models the pods hold
    assert snap.usage == await live.usage_many(["m1", "m2"]) == {"m1": (7.0, 1_000_000)}
    assert (await live.placement_snapshot([])).pods == []


async def test_placement_snapshot_is_never_caught_half_way(redis_url: str, prefix: str) -> None:
    """Another client reserves, settles and releases all the time; every snapshot still
    shows each pod's allocated == the sum of its allocations, loading == its loading
    copies, and a copy for every allocation (what the reservation scripts keep true)."""
    writer, reader = LiveState(redis_url, prefix=prefix), LiveState(redis_url, prefix=prefix)
    try:
        pods = await _pods(writer, 3)
        rng = random.Random(11)

        async def churn() -> None:
            for i in range(300):
                model, pod = f"m{i % 17}", pods[i % 3]
                ok, _ = await writer.reserve(model_id=model, pod_id=pod, size=rng.randint(1, 60), exclusive=False)
                if ok and rng.random() < 0.6:
                    await writer.settle(model_id=model, pod_id=pod, size=rng.randint(1, 60))
                if rng.random() < 0.4:
                    await writer.release(model_id=f"m{rng.randrange(17)}", pod_id=pods[rng.randrange(3)])

        async def observe() -> int:
            seen = 0
            for _ in range(150):
                snap = await reader.placement_snapshot(pods)
                for s in snap.pods:
                    assert s.pod.allocated == sum(s.allocations.values()) <= CAPACITY
                    assert set(s.copies) == set(s.allocations)
                    assert s.pod.loading == sum(c.state == "loading" for c in s.copies.values())
                    seen += len(s.allocations)
            return seen

        _, seen = await asyncio.gather(churn(), observe())
        assert seen > 0  # the reader saw copies, not only empty pods
    finally:
        keys = [k async for k in writer.redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await writer.redis.delete(*keys)
        await writer.close()
        await reader.close()


async def test_usage_is_counted_and_aged_by_half_life(live: LiveState) -> None:
    await live.add_usage({"m": 8}, at_ms=1_000_000, half_life_seconds=10)
    await live.add_usage({"m": 1}, at_ms=1_010_000, half_life_seconds=10)  # one half-life later
    assert await live.usage("m") == (5.0, 1_010_000)


async def test_clearing_a_pods_failures_forgets_only_that_pods(live: LiveState) -> None:
    """A pod that died (or came back as a new process of the same name) must not keep a
    model refused there for the failure back-off; other pods' failures stay."""
    for model in ("m1", "m2"):
        for pod in ("pod-a", "pod-ab", "pod-b"):
            await live.record_failure(model_id=model, pod_id=pod, reason="Stream removed", ttl_seconds=900)
    assert await live.clear_pod_failures("pod-a") == 2
    assert await live.failed_pods("m1", ["pod-a", "pod-ab", "pod-b"]) == {"pod-ab": "Stream removed", "pod-b": "Stream removed"}
    assert await live.failed_pods("m2", ["pod-a"]) == {}
    assert await live.clear_pod_failures("pod-a") == 0


async def test_failed_models_are_those_with_a_failure_on_some_pod(live: LiveState) -> None:
    assert await live.failed_models() == set()
    await live.record_failure(model_id="m.1", pod_id="pod-a", reason="x", ttl_seconds=900)
    await live.record_failure(model_id="m.1", pod_id="pod-b", reason="x", ttl_seconds=900)
    await live.record_failure(model_id="m-2", pod_id="pod-a", reason="x", ttl_seconds=900)
    assert await live.failed_models() == {"m.1", "m-2"}
    await live.clear_failures("m.1")
    assert await live.failed_models() == {"m-2"}
