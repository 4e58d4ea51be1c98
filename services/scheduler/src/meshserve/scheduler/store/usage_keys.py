"""Live state in Redis, one key family: usage and traffic: per-model request counts (aged hits, 10 s buckets for rates) and
the cluster's request and miss counters for shift detection.

Keys: ms:usage:<model>, ms:traffic:*. A part of `store.live.LiveState` (a mixin on `store.keys.LiveKeys`,
which holds the client, the prefix and the registered scripts).

May import: `meshserve.common`, `models`, the store wing, `routing.log`, redis. Never
imports the use cases or the transports.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshserve.scheduler.models import (
    PlacementConfig,
)
from meshserve.scheduler.store.keys import (
    LiveKeys,
    now_ms,
)


class UsageKeys(LiveKeys):
    """This key family's reads and writes (see the module's docstring)."""

    async def add_usage(
        self, usage: dict[str, int], *, at_ms: int, half_life_seconds: float = PlacementConfig.usage_half_life_seconds
    ) -> None:
        """Count requests: aged hits (for eviction scores) and 10 s buckets (for rates)."""
        if not usage:
            return
        bucket = at_ms // 10_000
        async with self.redis.pipeline(transaction=False) as pipe:
            for model, n in usage.items():
                # the async Script call is a coroutine even on a pipeline: await it to queue it
                await self._age_usage(
                    keys=[f"{self.p}:usage:{model}"], args=[n, at_ms, half_life_seconds * 1000], client=pipe
                )
                pipe.hincrby(f"{self.p}:rate:{model}", str(bucket), n)
                pipe.expire(f"{self.p}:rate:{model}", 180)
            pipe.incrby(f"{self.p}:traffic:requests", sum(usage.values()))
            await pipe.execute()

    async def count_load(self) -> None:
        """Count a load started because a request found no copy (a miss)."""
        await self.redis.incr(f"{self.p}:traffic:loads")

    async def traffic(self) -> tuple[int, int]:
        """(requests counted, loads counted) since this Redis started: the cluster's misses."""
        requests, loads = await self.redis.mget(f"{self.p}:traffic:requests", f"{self.p}:traffic:loads")
        return int(requests or 0), int(loads or 0)

    async def reset_usage(self, *, batch: int = 500) -> int:
        """Forget every model's request count (`hits` = 0; last use and rates stay), for a
        shift of the popular set (`shift.py`). Returns how many models it reset."""
        reset = 0
        keys: list[str] = []
        async for key in self.redis.scan_iter(match=f"{self.p}:usage:*", count=1000):
            keys.append(key)
            if len(keys) >= batch:
                reset += int(await self._reset_hits(keys=keys))
                keys = []
        if keys:
            reset += int(await self._reset_hits(keys=keys))
        return reset

    async def usage(self, model_id: str) -> tuple[float, int]:
        """(aged hits as of last use, last used ms)."""
        row = await self.redis.hgetall(f"{self.p}:usage:{model_id}")
        return float(row.get("hits", 0)), int(row.get("last_used_ms", 0))

    async def usage_many(self, model_ids: Iterable[str]) -> dict[str, tuple[float, int]]:
        ids = list(model_ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in ids:
                pipe.hgetall(f"{self.p}:usage:{m}")
            rows = await pipe.execute()
        return {
            m: (float(row.get("hits", 0)), int(row.get("last_used_ms", 0)))
            for m, row in zip(ids, rows, strict=True)
            if row
        }

    async def rates_per_minute(self, model_ids: Iterable[str], *, now: int | None = None) -> dict[str, float]:
        """Requests per minute over the last full minute of 10 s buckets."""
        ids = list(model_ids)
        current = (now or now_ms()) // 10_000
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in ids:
                pipe.hgetall(f"{self.p}:rate:{m}")
            rows = await pipe.execute()
        out = {}
        for m, row in zip(ids, rows, strict=True):
            total = sum(int(v) for b, v in row.items() if current - 6 <= int(b) < current)
            if total:
                out[m] = float(total)
        return out
