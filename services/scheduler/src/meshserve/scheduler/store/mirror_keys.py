"""Live state in Redis, one key family: the registry mirror: registered model ids, vmodels, copy bounds and the mirror's marker
(their changes append routes to the route log in the same transaction).

Keys: ms:models, ms:vmodels, ms:bounds, ms:mirror. A part of `store.live.LiveState` (a mixin on `store.keys.LiveKeys`,
which holds the client, the prefix and the registered scripts).

May import: `meshserve.common`, `models`, the store wing, `routing.log`, redis. Never
imports the use cases or the transports.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshserve.scheduler.store.keys import (
    LiveKeys,
    _run_id,
    now_ms,
)


class MirrorKeys(LiveKeys):
    """This key family's reads and writes (see the module's docstring)."""

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
