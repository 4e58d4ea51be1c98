"""LiveState's Lua scripts against a real Redis: atomic memory accounting."""

from __future__ import annotations

import asyncio
import random

import pytest

from meshserve.scheduler.live import LiveState

CAPACITY = 1_000


async def _pods(live: LiveState, n: int, *, max_loading: int = 100) -> list[str]:
    ids = [f"pod-{i}" for i in range(n)]
    for pod in ids:
        await live.upsert_pod(pod_id=pod, fields={"capacity": CAPACITY, "max_loading": max_loading, "labels": []})
    return ids


@pytest.fixture
async def live(redis_url: str, prefix: str):  # type: ignore[no-untyped-def]
    state = LiveState(redis_url, prefix=prefix)
    yield state
    keys = [k async for k in state.redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await state.redis.delete(*keys)
    await state.close()


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


async def test_usage_is_counted_and_aged_by_half_life(live: LiveState) -> None:
    await live.add_usage({"m": 8}, at_ms=1_000_000, half_life_seconds=10)
    await live.add_usage({"m": 1}, at_ms=1_010_000, half_life_seconds=10)  # one half-life later
    assert await live.usage("m") == (5.0, 1_010_000)
