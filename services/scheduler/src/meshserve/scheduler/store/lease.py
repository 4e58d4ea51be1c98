"""The leader lease: one scheduler replica at a time runs the background duties (pod
liveness, runtime rows, copy scaling, model counts, shift detection).

A key in Redis (`<prefix>:leader`) holds the replica id with a TTL; the holder renews it
on each pass, any other replica takes it once it expires. Owns nothing else.

May import: redis (through the live store's client). Never imports the use cases or the
transports.
"""

from __future__ import annotations

import redis.asyncio as aioredis


class LeaderLease:
    """`await lease.hold()` is True while this replica is the leader (it renews the lease)."""

    def __init__(self, redis: aioredis.Redis, *, key: str, replica_id: str, lease_ms: int) -> None:
        self.redis = redis
        self.key = key
        self.replica_id = replica_id
        self.lease_ms = lease_ms

    async def hold(self) -> bool:
        """Take the lease when it is free, renew it when this replica holds it."""
        if await self.redis.set(self.key, self.replica_id, nx=True, px=self.lease_ms):
            return True
        if await self.redis.get(self.key) == self.replica_id:
            await self.redis.pexpire(self.key, self.lease_ms)
            return True
        return False
