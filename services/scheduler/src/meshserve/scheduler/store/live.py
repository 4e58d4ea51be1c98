"""Live placement state in Redis: pods, copies, reservations, usage, failures, routes.

Everything here can be rebuilt: from the pullers' heartbeats (pods and the copies
they hold) and the Postgres registry (models, vmodels). Memory accounting per pod is
changed only by the Lua scripts of `store/scripts.py`, so two scheduler replicas can never
over-commit a pod or start the same first copy twice:

* `reserve`  — take `bytes` on a pod before loading (fails if it does not fit, the pod
               is at its loading limit, the copy exists, or with `exclusive` when the
               model has any copy at all);
* `settle`   — after the load, replace the reservation by the measured size;
* `release`  — give the bytes back (failed load, unload, eviction).

Those scripts keep three facts true between any two commands: a pod's `allocated` is
the sum of its `alloc` hash, every `alloc` entry has a copy entry (and back), and
`loading` counts the pod's `loading:` copies. Readers that need all three at once
(placement's pod views) read them with one script too (`placement_snapshot`), so they
never see a pod half-way through a reservation.

Key layout (prefix `ms` by default):
  ms:pods                 set of pod ids
  ms:pod:<pod>            hash: capacity, allocated, loading, max_loading, labels, addresses, ...,
                          view_version (new with every change placement would see but usage)
  ms:view_seq             the counter view versions come from
  ms:heads                hash: pod id -> "<view_version>:<heartbeat_ms>" of every registered pod
  ms:alloc:<pod>          hash: model id -> bytes held on that pod
  ms:copies:<model>       hash: pod id -> "loading:<ms>" | "loaded:<ms>"
  ms:models               set of registered model ids
  ms:vmodels              hash: vmodel id -> active model id
  ms:bounds               hash: model id -> "<min copies>:<max copies>"
  ms:mirror               hash: run_id (of the Redis server the mirror was written in), synced_ms,
                          syncs (writes of the mirror since this key was lost): the marker of the
                          mirror above (models, vmodels, bounds), written in `sync_registry`'s MULTI
  ms:released:<pod>       hash: model id -> ms its copy there was released (TTL RELEASED_GRACE_MS):
                          such a copy is not adopted from the pod's reports meanwhile
  ms:usage:<model>        hash: hits, last_used_ms
  ms:traffic:requests     counter: requests reported (all models), for shift detection
  ms:traffic:loads        counter: loads started by a miss
  ms:fail:<model>:<pod>   string (TTL = back-off): reason of the last failed load there
  ms:routelog...          the route log (see routing/log.py): every route change, in order

May import: `meshserve.common`, `models`, the store wing, `routing.log`, redis. Never
imports the use cases or the transports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from meshserve.common.errors import Unavailable
from meshserve.scheduler.models import (
    CopyRecord,
    PlacementConfig,
    PlacementSnapshot,
    PodInfo,
    PodSnapshot,
)
from meshserve.scheduler.routing.log import RouteLog
from meshserve.scheduler.store import scripts
from meshserve.scheduler.store.connection import connect

RELEASED_GRACE_MS = 30_000
"""How long after releasing a copy the scheduler ignores the pod's reports of it: a
heartbeat sent before the pod's unload finished still lists the model. If the unload
failed and the pod really holds it, the copy is adopted after this."""

def now_ms() -> int:
    return int(time.time() * 1000)


class LiveState:
    def __init__(self, url: str, *, prefix: str = "ms") -> None:
        self.redis: aioredis.Redis = connect(url, decode=True, max_connections=64)
        self.p = prefix
        self._reserve = self.redis.register_script(scripts.RESERVE)
        self._settle = self.redis.register_script(scripts.SETTLE)
        self._release = self.redis.register_script(scripts.RELEASE)
        self._adopt = self.redis.register_script(scripts.ADOPT)
        self._remove_pod = self.redis.register_script(scripts.REMOVE_POD)
        self._upsert_pod = self.redis.register_script(scripts.UPSERT_POD)
        self._age_usage = self.redis.register_script(scripts.AGE_USAGE)
        self._reset_hits = self.redis.register_script(scripts.RESET_HITS)
        self._placement_snapshot = self.redis.register_script(scripts.PLACEMENT_SNAPSHOT)
        self._set_draining = self.redis.register_script(scripts.SET_DRAINING)
        self.routes = RouteLog(url, prefix=prefix)

    async def close(self) -> None:
        await self.routes.close()
        await self.redis.aclose()

    # -- keys -------------------------------------------------------------------------
    def k_pod(self, pod: str) -> str:
        return f"{self.p}:pod:{pod}"

    def k_released(self, pod: str) -> str:
        return f"{self.p}:released:{pod}"

    def k_alloc(self, pod: str) -> str:
        return f"{self.p}:alloc:{pod}"

    def k_copies(self, model: str) -> str:
        return f"{self.p}:copies:{model}"

    @property
    def k_view_seq(self) -> str:
        return f"{self.p}:view_seq"

    @property
    def k_heads(self) -> str:
        return f"{self.p}:heads"

    @property
    def k_mirror(self) -> str:
        return f"{self.p}:mirror"

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as err:
            raise Unavailable(f"live state (Redis) is unavailable: {err}") from err

    # -- pods ---------------------------------------------------------------------------
    async def upsert_pod(self, *, pod_id: str, fields: dict[str, Any]) -> bool:
        """Write a pod's heartbeat; returns True when the pod was not known before. A new
        pod, or new addresses, are logged for the routes (see `_UPSERT_POD`)."""
        pairs = [
            str(x)
            for k, v in fields.items()
            for x in (k, json.dumps(sorted(v)) if k == "labels" else v)
        ]
        existed = await self._upsert_pod(
            keys=[self.k_pod(pod_id), f"{self.p}:pods", self.k_view_seq, self.k_heads], args=[pod_id, self.p, *pairs]
        )
        return not existed

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

    # -- copies -------------------------------------------------------------------------
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

    # -- registry mirror ------------------------------------------------------------------
    # Changes to which models and vmodels exist append their routes to the route log in
    # the same transaction (MULTI), like the copy scripts do.
    async def add_model(self, model_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(f"{self.p}:models", model_id)
            await self.routes.log([("R", model_id, "")], pipe=pipe)
            await pipe.execute()

    async def remove_model(self, model_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(f"{self.p}:models", model_id)
            pipe.hdel(f"{self.p}:bounds", model_id)
            pipe.delete(f"{self.p}:usage:{model_id}", f"{self.p}:rate:{model_id}")
            await self.routes.log([("U", model_id, "")], pipe=pipe)
            await pipe.execute()

    async def model_ids(self) -> set[str]:
        return set(await self.redis.smembers(f"{self.p}:models"))

    async def has_model(self, model_id: str) -> bool:
        return bool(await self.redis.sismember(f"{self.p}:models", model_id))

    async def set_vmodel(self, vmodel_id: str, model_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.p}:vmodels", vmodel_id, model_id)
            await self.routes.log([("V", vmodel_id, model_id)], pipe=pipe)
            await pipe.execute()

    async def delete_vmodel(self, vmodel_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(f"{self.p}:vmodels", vmodel_id)
            await self.routes.log([("X", vmodel_id, "")], pipe=pipe)
            await pipe.execute()

    async def vmodels(self) -> dict[str, str]:
        return dict(await self.redis.hgetall(f"{self.p}:vmodels"))

    async def sync_registry(
        self, *, model_ids: Iterable[str], vmodels: dict[str, str], bounds: dict[str, tuple[int, int]] | None = None
    ) -> None:
        """Replace the Redis mirror of the registry (after a Redis restart or at start);
        the route log starts a new epoch, so every route hub reloads and sends routers a snapshot.

        The mirror's marker (`ms:mirror`) is written in the same MULTI and names the server's
        run id, read just before: should Redis restart in between, the marker names the old
        run in the new server, which `mirror_current` reads as a mirror to write again (the
        safe way round)."""
        ids = list(model_ids)
        run_id = await self.run_id()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self.p}:models", f"{self.p}:vmodels", f"{self.p}:bounds")
            if ids:
                pipe.sadd(f"{self.p}:models", *ids)
            if vmodels:
                pipe.hset(f"{self.p}:vmodels", mapping=vmodels)
            if bounds:
                pipe.hset(f"{self.p}:bounds", mapping={m: f"{lo}:{hi}" for m, (lo, hi) in bounds.items()})
            pipe.hset(self.k_mirror, mapping={"run_id": run_id, "synced_ms": now_ms()})
            pipe.hincrby(self.k_mirror, "syncs", 1)
            await self.routes.reset(pipe=pipe)
            await pipe.execute()

    async def run_id(self) -> str:
        """The Redis server's run id (new with every start); '' where INFO does not give one."""
        return _run_id(await self.redis.info("server"))

    async def mirror_current(self) -> bool:
        """Whether this Redis holds the registry mirror written by `sync_registry` since it
        last started: False when the marker is missing (Redis lost its data, or the keys were
        deleted) or names another run (Redis restarted, maybe from an older snapshot of its
        data, which may lack models registered since). One round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.k_mirror, "run_id")
            pipe.info("server")
            marked, info = await pipe.execute()
        return marked is not None and marked == _run_id(info)

    # -- usage and failures ---------------------------------------------------------------
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

    async def set_bounds(self, model_id: str, *, min_copies: int, max_copies: int) -> None:
        key = f"{self.p}:bounds"
        if min_copies or max_copies:
            await self.redis.hset(key, model_id, f"{min_copies}:{max_copies}")
        else:
            await self.redis.hdel(key, model_id)

    async def bounds(self) -> dict[str, tuple[int, int]]:
        out = {}
        for model, value in (await self.redis.hgetall(f"{self.p}:bounds")).items():
            lo, _, hi = value.partition(":")
            out[model] = (int(lo or 0), int(hi or 0))
        return out

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


def _run_id(server_info: dict[str, Any]) -> str:
    return str(server_info.get("run_id", ""))


def _pairs(flat: list[str]) -> dict[str, str]:
    """HGETALL's flat [field, value, ...] list (as a script returns it) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _copy(model_id: str, pod_id: str, value: str) -> CopyRecord:
    state, _, since = value.partition(":")
    return CopyRecord(model_id=model_id, pod_id=pod_id, state=state, since_ms=int(since or 0))


def redis_unavailable(err: BaseException) -> Unavailable | None:
    """Translate a Redis failure into the error callers see (503 / UNAVAILABLE)."""
    if isinstance(err, RedisError):
        return Unavailable(f"live state (Redis) is unavailable: {type(err).__name__}: {err}")
    return None
