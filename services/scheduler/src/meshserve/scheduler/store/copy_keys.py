"""Live state in Redis, one key family: copies: which pods hold (or are loading) each model,
and the models waiting for a runtime (a load found no compatible pod: loaded when one
registers, `copies.Copies.load_awaiting`).

Keys: ms:copies:<model>, ms:awaiting_runtime (set of model ids). A part of `store.live.LiveState` (a mixin on `store.keys.LiveKeys`,
which holds the client, the prefix and the registered scripts).

May import: `meshserve.common`, `models`, the store wing, `routing.log`, redis. Never
imports the use cases or the transports.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshserve.scheduler.models import (
    CopyRecord,
)
from meshserve.scheduler.store.keys import (
    LiveKeys,
    _copy,
)


class CopyKeys(LiveKeys):
    """This key family's reads and writes (see the module's docstring)."""

    async def copies(self, model_id: str) -> list[CopyRecord]:
        raw = await self.redis.hgetall(self.k_copies(model_id))
        return [_copy(model_id, pod, value) for pod, value in sorted(raw.items())]

    async def copies_many(self, model_ids: Iterable[str]) -> dict[str, list[CopyRecord]]:
        ids = list(model_ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in ids:
                pipe.hgetall(self.k_copies(m))
            rows = await pipe.execute()
        return {m: [_copy(m, pod, v) for pod, v in sorted(row.items())] for m, row in zip(ids, rows, strict=True)}

    @property
    def k_awaiting(self) -> str:
        return f"{self.p}:awaiting_runtime"

    async def await_runtime(self, model_id: str) -> None:
        """`model_id` was to be loaded and no pod of a runtime for it is up."""
        await self.redis.sadd(self.k_awaiting, model_id)

    async def awaiting_runtime(self) -> list[str]:
        return sorted(await self.redis.smembers(self.k_awaiting))

    async def stop_awaiting(self, model_id: str) -> None:
        await self.redis.srem(self.k_awaiting, model_id)
