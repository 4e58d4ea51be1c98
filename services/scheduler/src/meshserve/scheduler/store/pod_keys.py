"""Live state in Redis, one key family: pods and their reservations: pod hashes, allocations, heads, view versions, and the
reserve / settle / release / adopt scripts that keep a pod's accounting atomic.

Keys: ms:pods, ms:pod:<pod>, ms:alloc:<pod>, ms:heads, ms:view_seq, ms:released:<pod>. A part of `store.live.LiveState` (a mixin on `store.keys.LiveKeys`,
which holds the client, the prefix and the registered scripts).

May import: `meshserve.common`, `models`, the store wing, `routing.log`, redis. Never
imports the use cases or the transports.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from meshserve.scheduler.models import (
    PlacementSnapshot,
    PodInfo,
    PodSnapshot,
)
from meshserve.scheduler.routing.log import LUA as ROUTE_LOG_LUA
from meshserve.scheduler.store.keys import (
    RELEASED_GRACE_MS,
    LiveKeys,
    _copy,
    _pairs,
    now_ms,
)

# A pod's per-copy concurrency limit (`max_concurrency`, 0 or absent = none): written, and
# logged for the routes (an M entry) when it differs from what the hash holds. Runs after
# the heartbeat's upsert, so the hash exists. KEYS[1]: pod hash; ARGV: pod id, prefix, limit.
_POD_LIMIT = ROUTE_LOG_LUA + """
local old = redis.call('HGET', KEYS[1], 'max_concurrency') or '0'
if old == ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'max_concurrency', ARGV[3])
log_change('M', ARGV[1], ARGV[3])
routes_logged(ARGV[2])
return 1
"""


class PodKeys(LiveKeys):
    """This key family's reads and writes (see the module's docstring)."""

    async def upsert_pod(self, *, pod_id: str, fields: dict[str, Any]) -> bool:
        """Write a pod's heartbeat; returns True when the pod was not known before. A new
        pod, or new addresses, are logged for the routes (see `_UPSERT_POD`); so is a change
        of its `max_concurrency` (per-copy concurrency limit, `_POD_LIMIT`), in the same
        round trip."""
        fields = dict(fields)
        limit = fields.pop("max_concurrency", None)
        pairs = [
            str(x)
            for k, v in fields.items()
            for x in (k, json.dumps(sorted(v)) if k == "labels" else v)
        ]
        keys = [self.k_pod(pod_id), f"{self.p}:pods", self.k_view_seq, self.k_heads]
        if limit is None:
            existed = await self._upsert_pod(keys=keys, args=[pod_id, self.p, *pairs])
            return not existed
        script = getattr(self, "_pod_limit", None)
        if script is None:
            script = self._pod_limit = self.redis.register_script(_POD_LIMIT)
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._upsert_pod(keys=keys, args=[pod_id, self.p, *pairs], client=pipe)
            await script(keys=[self.k_pod(pod_id)], args=[pod_id, self.p, int(limit)], client=pipe)
            existed, _ = await pipe.execute()
        return not existed

    async def pod_limits(self, pod_ids: Iterable[str]) -> dict[str, int]:
        """The per-copy concurrency limit of each pod that has one (absent: unlimited)."""
        ids = list(pod_ids)
        if not ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for pod in ids:
                pipe.hget(self.k_pod(pod), "max_concurrency")
            values = await pipe.execute()
        return {pod: int(v) for pod, v in zip(ids, values, strict=True) if v and int(v) > 0}

    async def pod_ids(self) -> list[str]:
        """The registered pod ids, sorted (a pod's hash may already be gone: see `pods`)."""
        return sorted(await self.redis.smembers(f"{self.p}:pods"))

    async def pods(self) -> list[PodInfo]:
        ids = await self.pod_ids()
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for pod in ids:
                pipe.hgetall(self.k_pod(pod))
            rows = await pipe.execute()
        return [self._pod(pod, row) for pod, row in zip(ids, rows, strict=True) if row and "capacity" in row]

    async def pod(self, pod_id: str) -> PodInfo | None:
        row = await self.redis.hgetall(self.k_pod(pod_id))
        return self._pod(pod_id, row) if row and "capacity" in row else None

    @staticmethod
    def _pod(pod_id: str, row: dict[str, str]) -> PodInfo:
        return PodInfo(
            pod_id=pod_id,
            runtime=row.get("runtime", ""),
            labels=frozenset(json.loads(row.get("labels", "[]"))),
            management_address=row.get("management_address", ""),
            grpc_address=row.get("grpc_address", ""),
            rest_address=row.get("rest_address", ""),
            capacity=int(row.get("capacity", 0)),
            allocated=int(row.get("allocated", 0)),
            used=int(row.get("used", 0)),
            loading=int(row.get("loading", 0)),
            max_loading=int(row.get("max_loading", 1)),
            default_size=int(row.get("default_size", 1_000_000)),
            heartbeat_ms=int(row.get("heartbeat_ms", 0)),
            started_ms=int(row.get("started_ms", 0)),
            draining=row.get("draining") == "1",
            view_version=int(row.get("view_version", 0)),
        )

    async def pod_heads(self) -> dict[str, tuple[int, int]]:
        """Every registered pod's (view version, last heartbeat ms), one HGETALL: what a
        long-lived view of the cluster checks before a decision (placement/views.py)."""
        heads = await self.redis.hgetall(self.k_heads)
        out = {}
        for pod, head in heads.items():
            version, _, heartbeat = head.partition(":")
            out[pod] = (int(version), int(heartbeat))
        return out

    async def pod_allocations(self, pod_id: str) -> dict[str, int]:
        return {m: int(b) for m, b in (await self.redis.hgetall(self.k_alloc(pod_id))).items()}

    async def placement_snapshot(self, pod_ids: Iterable[str]) -> PlacementSnapshot:
        """The pods, their allocations and copies, and the usage of the models they hold,
        in one round trip and one atomic step (see `_PLACEMENT_SNAPSHOT`)."""
        ids = list(pod_ids)
        if not ids:
            return PlacementSnapshot(pods=[], usage={})
        keys = [key for pod in ids for key in (self.k_pod(pod), self.k_alloc(pod))]
        rows, usage_rows = await self._placement_snapshot(
            keys=keys, args=[f"{self.p}:copies:", f"{self.p}:usage:", *ids]
        )
        pods = []
        for pod_id, (info, alloc, states) in zip(ids, rows, strict=True):
            row = _pairs(info)
            if "capacity" not in row:
                continue  # removed meanwhile (or only a stray field left)
            held = _pairs(alloc)
            copies = {
                model: _copy(model, pod_id, state)
                for model, state in zip(held, states, strict=True)
                if state
            }
            pods.append(
                PodSnapshot(
                    pod=self._pod(pod_id, row),
                    allocations={m: int(b) for m, b in held.items()},
                    copies=copies,
                )
            )
        usage = {
            model: (float(hits or 0), int(last or 0)) for model, hits, last in usage_rows if hits or last
        }
        return PlacementSnapshot(pods=pods, usage=usage)

    async def remove_pod(self, pod_id: str) -> list[str]:
        """Forget a pod and its copies; returns the model ids it held."""
        models = await self._remove_pod(
            keys=[self.k_pod(pod_id), self.k_alloc(pod_id), f"{self.p}:pods", self.k_heads],
            args=[pod_id, self.p],
        )
        return list(models)

    async def set_draining(self, pod_id: str, draining: bool) -> None:
        await self._set_draining(
            keys=[self.k_pod(pod_id), self.k_view_seq, self.k_heads], args=["1" if draining else "0", pod_id]
        )

    def _keys(self, model: str, pod: str) -> list[str]:
        return [self.k_pod(pod), self.k_alloc(pod), self.k_copies(model), self.k_view_seq, self.k_heads]

    async def reserve(self, *, model_id: str, pod_id: str, size: int, exclusive: bool) -> tuple[bool, str]:
        ok, why = await self._reserve(
            keys=self._keys(model_id, pod_id), args=[model_id, pod_id, size, now_ms(), "1" if exclusive else "0"]
        )
        return bool(ok), str(why)

    async def settle(self, *, model_id: str, pod_id: str, size: int) -> bool:
        return bool(await self._settle(keys=self._keys(model_id, pod_id), args=[model_id, pod_id, size, now_ms(), self.p]))

    async def release(self, *, model_id: str, pod_id: str) -> bool:
        return bool(await self._release(**self._release_call(model_id, pod_id)))

    def _release_call(self, model_id: str, pod_id: str) -> dict[str, list[Any]]:
        """The release script's keys and args (also queued on pipelines by the bench)."""
        return {
            "keys": [*self._keys(model_id, pod_id), self.k_released(pod_id)],
            "args": [model_id, pod_id, self.p, now_ms(), RELEASED_GRACE_MS],
        }

    async def adopt(self, *, model_id: str, pod_id: str, size: int) -> bool:
        """Record a copy the pod reports that Redis does not hold; False if Redis knows the
        copy, the pod is not registered, or the copy was released there within
        `RELEASED_GRACE_MS` (the pod may still list it until its unload is done)."""
        return bool(
            await self._adopt(
                keys=[*self._keys(model_id, pod_id), self.k_released(pod_id)],
                args=[model_id, pod_id, size, now_ms(), self.p, RELEASED_GRACE_MS],
            )
        )
