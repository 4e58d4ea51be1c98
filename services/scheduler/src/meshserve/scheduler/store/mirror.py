"""The registry mirror: the registry's model ids, vmodels and copy bounds copied into
Redis, where route snapshots read them.

Owns when the mirror is written: at a process's start (it repairs drift, such as a
registration that reached Postgres only) and whenever its marker says Redis lost it
(`LiveState.mirror_current`: missing, or written before Redis last started). Concurrent
callers share one check (`Coalesced`), so a burst of heartbeats after a Redis restart
costs one rebuild.

May import: `meshserve.common` and the rest of the store wing. Never imports the use
cases or the transports.
"""

from __future__ import annotations

import logging

from meshserve.common.coalesce import Coalesced
from meshserve.scheduler.store.live import LiveState
from meshserve.scheduler.store.registry import Registry

log = logging.getLogger(__name__)


class RegistryMirror:
    """Writes and repairs the Redis mirror of the registry."""

    def __init__(self, *, registry: Registry, live: LiveState) -> None:
        self.registry = registry
        self.live = live
        self._check = Coalesced(self._ensure)
        self._synced = False   # this process has written the mirror once

    async def sync(self) -> None:
        """Copy the registry's model and vmodel ids into Redis (router snapshots read them)."""
        ids = await self.registry.all_model_ids()
        vmodels, _ = await self.registry.list_vmodels(limit=1_000_000)
        bounds = await self.registry.all_bounds()
        await self.live.sync_registry(
            model_ids=ids, vmodels={v.id: v.active_model_id for v in vmodels}, bounds=bounds
        )

    async def ensure(self) -> None:
        """Rebuild the mirror when this process has not written it yet or its marker says
        Redis lost it. Called by the mirror loop (app.py), by the route hub before a table
        load and before a pod's copies are adopted (`before_adopting`).

        Concurrent calls share one run of the check (each call returns after a run that
        began after it); a run that follows a rebuild finds the marker current. A failed
        rebuild (Postgres down) raises to every call that shared it; the next call tries
        again."""
        await self._check()

    async def _ensure(self) -> None:
        if self._synced and await self.live.mirror_current():
            return
        await self.sync()
        log.info("registry mirror written to Redis (%s)", "its marker was missing or stale" if self._synced else "start-up")
        self._synced = True

    async def before_adopting(self, pod_id: str) -> None:
        """Make sure the mirror is in Redis before copies are adopted into it. An adopted
        copy's route is published for the models the mirror lists as of the adoption:
        adopted into a Redis that lost the mirror, its route would go out as a removal, and
        routers would drop the model (their fallback too) until the mirror is rebuilt. A
        failed rebuild does not stop the adoption (live state must say what pods hold); the
        mirror loop tries again. Never raises."""
        try:
            await self.ensure()
        except Exception as err:   # Postgres down, mostly (Unavailable); a heartbeat must not fail on it
            log.warning("adopting copies on %s without the registry mirror in Redis: %s", pod_id, err)
