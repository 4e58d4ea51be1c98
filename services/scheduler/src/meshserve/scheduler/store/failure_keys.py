"""Live state in Redis, one key family: failures: the reason of the last failed load of a model on a pod, kept for the
back-off (a TTL).

Keys: ms:fail:<model>:<pod>. A part of `store.live.LiveState` (a mixin on `store.keys.LiveKeys`,
which holds the client, the prefix and the registered scripts).

May import: `meshserve.common`, `models`, the store wing, `routing.log`, redis. Never
imports the use cases or the transports.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshserve.scheduler.store.keys import (
    LiveKeys,
)


class FailureKeys(LiveKeys):
    """This key family's reads and writes (see the module's docstring)."""

    async def record_failure(self, *, model_id: str, pod_id: str, reason: str, ttl_seconds: float) -> None:
        await self.redis.set(f"{self.p}:fail:{model_id}:{pod_id}", reason, px=max(1, int(ttl_seconds * 1000)))

    async def failed_pods(self, model_id: str, pod_ids: Iterable[str]) -> dict[str, str]:
        ids = list(pod_ids)
        if not ids:
            return {}
        values = await self.redis.mget([f"{self.p}:fail:{model_id}:{pod}" for pod in ids])
        return {pod: v for pod, v in zip(ids, values, strict=True) if v is not None}

    async def failed_models(self) -> set[str]:
        """Models with a load failure still in its back-off on some pod (a SCAN of the
        failure keys: a metrics refresh's cost, not a request's)."""
        prefix = f"{self.p}:fail:"
        return {
            key[len(prefix):].rsplit(":", 1)[0]
            async for key in self.redis.scan_iter(match=f"{prefix}*", count=1000)
        }

    async def clear_pod_failures(self, pod_id: str) -> int:
        """Forget the load failures recorded on `pod_id` (it is gone, or came back as a new
        process under the same name, as a restarted container does); returns how many."""
        keys = [k async for k in self.redis.scan_iter(match=f"{self.p}:fail:*:{pod_id}", count=1000)]
        if keys:
            await self.redis.delete(*keys)
        return len(keys)

    async def clear_failures(self, model_id: str) -> None:
        keys = [k async for k in self.redis.scan_iter(match=f"{self.p}:fail:{model_id}:*", count=500)]
        if keys:
            await self.redis.delete(*keys)
