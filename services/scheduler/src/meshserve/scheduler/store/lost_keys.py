"""Live state in Redis, one key family: what a dropped pod (or a dead scheduler replica)
leaves behind. The models whose
copies were lost with it (re-placed by the leader: `scaler.CopyScaler.replace_lost`), and a
marker that the pod was dropped, so that when the same pod comes back (a hung pod that
resumes) the copies it still holds are not all adopted beside their replacements
(`pods.Pods.report_pod`); and how many loads a pod has in progress, the cheap check before
`report_pod` looks for loads a dead replica abandoned.

Keys: ms:lost (sorted set: model id -> ms its copy was lost), ms:dropped:<pod> (string, TTL
`DROPPED_MARKER_MS`). A part of `store.live.LiveState` (a mixin on `store.keys.LiveKeys`).

May import: `meshserve.common`, the store wing, redis. Never imports the use cases or the
transports.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshserve.scheduler.store.keys import RELEASED_GRACE_MS, LiveKeys, now_ms

DROPPED_MARKER_MS = 3_600_000
"""How long a dropped pod is remembered as dropped (a hung pod that resumes later than this is
taken as a new pod: its copies are adopted)."""

LOST_MAX_AGE_MS = 300_000
"""A lost copy not re-placed within this long is forgotten (its model loads on demand)."""


class LostKeys(LiveKeys):
    """This key family's reads and writes (see the module's docstring)."""

    @property
    def k_lost(self) -> str:
        return f"{self.p}:lost"

    def k_dropped(self, pod: str) -> str:
        return f"{self.p}:dropped:{pod}"

    async def mark_dropped(self, pod_id: str, model_ids: Iterable[str]) -> None:
        """Remember that `pod_id` was dropped and that its copies of `model_ids` were lost."""
        at = now_ms()
        models = {m: at for m in model_ids}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.k_dropped(pod_id), str(at), px=DROPPED_MARKER_MS)
            if models:
                pipe.zadd(self.k_lost, models)  # type: ignore[arg-type]
            await pipe.execute()

    async def take_dropped(self, pod_id: str) -> bool:
        """Whether `pod_id` was dropped (and not seen since); forgets the marker."""
        return await self.redis.getdel(self.k_dropped(pod_id)) is not None

    async def lost_models(self) -> list[str]:
        """Models whose copy was lost with a dropped pod, oldest loss first (older ones than
        `LOST_MAX_AGE_MS` are forgotten here)."""
        await self.redis.zremrangebyscore(self.k_lost, 0, now_ms() - LOST_MAX_AGE_MS)
        return list(await self.redis.zrange(self.k_lost, 0, -1))

    async def forget_lost(self, model_id: str) -> None:
        await self.redis.zrem(self.k_lost, model_id)

    async def keep_released(self, pod_id: str, model_ids: Iterable[str]) -> None:
        """Mark copies of `model_ids` on `pod_id` as released now (as `release` does), so the
        pod's reports of them are not adopted while it unloads them."""
        at = now_ms()
        models = {m: str(at) for m in model_ids}
        if not models:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.k_released(pod_id), mapping=models)
            pipe.pexpire(self.k_released(pod_id), RELEASED_GRACE_MS)
            await pipe.execute()

    async def loading_count(self, pod_id: str) -> int:
        """The pod's loads in progress (its hash's `loading`, kept by the copy scripts)."""
        return int(await self.redis.hget(self.k_pod(pod_id), "loading") or 0)
