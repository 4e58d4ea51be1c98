"""Live state in Redis, one key family: copies: which pods hold (or are loading) each model.

Keys: ms:copies:<model>. A part of `store.live.LiveState` (a mixin on `store.keys.LiveKeys`,
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
