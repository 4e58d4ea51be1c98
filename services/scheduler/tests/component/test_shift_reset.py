"""Shift detection on real Redis and Postgres: the traffic counters, forgetting the request
counts, and the leader's step that joins them (`SchedulerService.watch_for_shift`)."""

from __future__ import annotations

import asyncio

import pytest

from meshserve.common.errors import MeshError
from meshserve.scheduler.service import ModelSpec, SchedulerService
from meshserve.scheduler.shift import ShiftConfig, ShiftDetector
from meshserve.scheduler.store.live import LiveState
from meshserve.scheduler.store.migrate import upgrade

from .conftest import ServiceFactory


async def test_usage_reports_and_misses_are_counted(live: LiveState) -> None:
    assert await live.traffic() == (0, 0)
    await live.add_usage({"a": 3, "b": 4}, at_ms=1_000)
    await live.add_usage({"a": 1}, at_ms=2_000)
    await live.count_load()
    assert await live.traffic() == (8, 1)


async def test_reset_forgets_every_count_and_keeps_the_rest(live: LiveState, redis_url: str) -> None:
    for i in range(5):
        await live.add_usage({f"m{i}": 10 + i}, at_ms=5_000)
    await live.redis.delete(f"{live.p}:usage:m4")          # a model unregistered meanwhile
    other = LiveState(redis_url, prefix=f"{live.p}x")      # another deployment on the same Redis
    try:
        await other.add_usage({"m0": 9}, at_ms=5_000)
        rates = await live.rates_per_minute(["m0", "m1"], now=5_000)
        assert await live.reset_usage(batch=2) == 4        # batches of 2: three script calls
        for i in range(4):
            assert await live.usage(f"m{i}") == (0.0, 5_000)   # last use kept
        assert not await live.redis.exists(f"{live.p}:usage:m4")   # not brought back
        assert await other.usage("m0") == (9.0, 5_000)
        assert await live.rates_per_minute(["m0", "m1"], now=5_000) == rates   # rates are not counts
    finally:
        keys = [k async for k in other.redis.scan_iter(match=f"{live.p}x:*")]
        await other.redis.delete(*keys)
        await other.close()


async def test_the_leaders_step_forgets_the_counts_when_the_miss_ratio_jumps(service: SchedulerService) -> None:
    now = [1_000.0]
    service.clock = lambda: now[0]
    detector = ShiftDetector(ShiftConfig(window_seconds=10, min_requests=50, cooldown_seconds=60))

    async def second(requests: int, misses: int) -> object:
        await service.report_usage({"old": requests - misses, **{f"new{now[0]:.0f}-{k}": 1 for k in range(misses)}})
        for _ in range(misses):
            await service.live.count_load()
        now[0] += 1
        return await service.watch_for_shift(detector)

    for _ in range(60):                                     # a minute at 10% misses
        assert await second(20, 2) is None
    hits_before, _ = await service.live.usage("old")
    assert hits_before > 1_000
    verdicts = [await second(20, 12) for _ in range(10)]     # then 60% misses
    fired = [v for v in verdicts if v is not None]
    assert len(fired) == 1 and "popular set moved" in str(fired[0])
    hits_after, _ = await service.live.usage("old")
    assert hits_after < 20 * 10                             # only what came after the verdict
    events = await service.registry.list_events(kinds=["usage-reset"])
    assert len(events) == 1 and "forgot the request counts" in events[0].message


async def test_only_loads_started_by_a_request_count_as_misses(make_service: ServiceFactory, database_url: str) -> None:
    upgrade(database_url)
    async with make_service(database_url, runtime_wait_seconds=0.05, load_timeout_seconds=0.5) as service:
        for m in ("a", "b", "c"):
            await service.register_model(ModelSpec(model_id=m, model_type="sklearn", storage_uri=f"s3://b/{m}.joblib"))
        # no pod serves sklearn: every load fails, after it was counted
        with pytest.raises(MeshError):
            await service.copies.ensure_loaded("a", miss=True)
        assert await service.live.traffic() == (0, 1)
        # requests arriving together share one load, counted once
        both = await asyncio.gather(*(service.copies.ensure_loaded("b", miss=True) for _ in range(2)), return_exceptions=True)
        assert all(isinstance(r, MeshError) for r in both)
        assert await service.live.traffic() == (0, 2)
        # a load for a registration, scaling or a drain is not a miss
        with pytest.raises(MeshError):
            await service.copies.ensure_loaded("c")
        assert await service.live.traffic() == (0, 2)
