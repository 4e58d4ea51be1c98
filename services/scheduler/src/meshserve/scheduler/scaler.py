"""Copy counts after the first copy: the leader's scaling pass and the draining of a pod.

`scaling.plan_scaling` (pure) decides how many copies each model should gain or lose from
its request rate and its minCopies/maxCopies; `CopyScaler.scale_once` reads the inputs
from live state and applies that plan. `CopyScaler.drain_pod` empties one pod: each model
that has no copy elsewhere gets one before the pod's copy is unloaded. A first copy is
`copies.Copies.ensure_loaded`, an extra one `loading.Loader.place_and_load`, an unload
`unloading.Unloader`; this module only decides which copies to add or remove.
`CopyScaler.replace_lost` re-places the copies a dropped pod took with it (the models
`pods.Pods` listed as lost), the most requested first, one load at a time in a background
task of its own (`start_replacing_lost`, a leader duty), where there is room without
evicting, so that requests find them loaded; on a full cluster the requests' own loads
decide.

Invariants:
* the pods a plan may spread copies over are the alive ones that are not draining
  (placement itself never chooses a draining pod);
* a change that cannot be made now (no room, no runtime) is logged and left for the
  next pass; it never fails the pass for the other models;
* scaling down unloads the copies on the fullest pods first (a pod the pass did not
  count, dead or draining, is taken as twice full), the newest copy first among equals.

May import: `meshserve.common`, the store wing, `copies`, `loading`, `unloading`, `pods`,
`events`, `scaling`, `models`. Never imports `vmodels`, `service` or the transports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from meshserve.common.errors import MeshError, NotFound
from meshserve.scheduler.copies import Copies
from meshserve.scheduler.events import EventLog
from meshserve.scheduler.loading import Loader
from meshserve.scheduler.models import CopyState
from meshserve.scheduler.pods import Pods
from meshserve.scheduler.scaling import CopyChange, ModelLoad, ScalingPolicy, plan_scaling
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.store.live import CopyRecord, LiveState, PodInfo
from meshserve.scheduler.store.registry import Registry
from meshserve.scheduler.unloading import Unloader

log = logging.getLogger(__name__)



class CopyScaler:
    """Adds and removes copies of loaded models; moves copies off a pod being drained."""

    def __init__(
        self,
        *,
        settings: SchedulerSettings,
        registry: Registry,
        live: LiveState,
        pods: Pods,
        copies: Copies,
        loader: Loader,
        unloader: Unloader,
        events: EventLog,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.live = live
        self._pods = pods
        self.copies = copies
        self.loader = loader
        self.unloader = unloader
        self.events = events
        self._replacing: asyncio.Task[list[str]] | None = None

    def start_replacing_lost(self) -> None:
        """Run `replace_lost` in the background unless a run is still going."""
        if self._replacing is None or self._replacing.done():
            self._replacing = asyncio.create_task(self.replace_lost(), name="re-place lost copies")
            self._replacing.add_done_callback(_log_failure)

    async def close(self) -> None:
        """Stop a background re-placement (a load it started is released by the loader)."""
        if self._replacing is not None and not self._replacing.done():
            self._replacing.cancel()
        await self.replacing_done()

    async def replacing_done(self) -> None:
        """Return when the background re-placement (if any) has finished (tests, shutdown)."""
        if self._replacing is not None:
            await asyncio.gather(self._replacing, return_exceptions=True)

    async def replace_lost(self) -> list[str]:
        """Give a copy back to each model that lost one with a dropped pod and has none now,
        the most requested first, one at a time, where there is room: one placement attempt
        each, never evicting and never waiting for a load slot, so on a full cluster the
        requests' own loads (which may evict) decide, as without this pass (re-placing every
        lost copy there only churns: measured with `make chaos`). A model with no request in
        the usage window, or not placed now, loads on its next request. Returns the models
        loaded."""
        lost = await self.live.lost_models()
        if not lost:
            return []
        rates = await self.live.rates_per_minute(lost)
        done = []
        for model in sorted(lost, key=lambda m: (-rates.get(m, 0.0), m)):
            await self.live.forget_lost(model)
            if rates.get(model, 0.0) <= 0 or await self.live.copies(model):
                continue
            record = await self._pods.safe_find(model)
            if record is None:
                continue
            deadline = time.monotonic() + self.settings.load_timeout_seconds
            try:
                placed = await self.loader.place_and_load(record, exclusive=True, deadline=deadline, evict=False)
            except MeshError as err:
                log.info("lost copy of %s not re-placed: %s", model, err.message)
                continue
            if placed:
                done.append(model)
        if done:
            log.info("re-placed %d copies lost with dropped pods", len(done))
        return done

    async def scale_once(self, *, only: Sequence[str] | None = None) -> list[CopyChange]:
        """One pass of copy scaling (leader loop): minCopies, maxCopies, request rates."""
        ids = sorted(only) if only is not None else sorted(await self.live.model_ids())
        copies = await self.live.copies_many(ids)
        rates = await self.live.rates_per_minute(ids)
        bounds = await self.live.bounds()
        pods = [p for p in await self.live.pods() if self._pods.alive(p) and not p.draining]
        loads = [
            ModelLoad(
                model_id=m,
                rate_per_minute=rates.get(m, 0.0),
                copies=len(copies.get(m, [])),
                min_copies=bounds.get(m, (0, 0))[0],
                max_copies=bounds.get(m, (0, 0))[1],
            )
            for m in ids
            if copies.get(m) or bounds.get(m, (0, 0))[0] > 0
        ]
        changes = plan_scaling(
            loads, policy=ScalingPolicy(threshold_rpm=self.settings.scale_up_rpm_threshold), pods=len(pods)
        )
        for change in changes:
            try:
                if change.delta > 0:
                    await self._add_copies(change)
                else:
                    await self._remove_copies(change, copies.get(change.model_id, []), pods)
            except MeshError as err:
                log.info("scaling %s by %+d not possible now: %s", change.model_id, change.delta, err.message)
        return list(changes)

    async def _add_copies(self, change: CopyChange) -> None:
        record = await self.registry.find_model(change.model_id)
        if record is None:
            return
        for _ in range(change.delta):
            deadline = time.monotonic() + self.settings.load_timeout_seconds
            copies = await self.live.copies(change.model_id)
            if not copies:
                await self.copies.ensure_loaded(change.model_id)
            elif not await self.loader.place_and_load(record, exclusive=False, deadline=deadline):
                return
            await self.events.record("scaled-up", model_id=change.model_id, message=change.reason)

    async def _remove_copies(self, change: CopyChange, copies: Sequence[CopyRecord], pods: Sequence[PodInfo]) -> None:
        fullness = {p.pod_id: p.allocated / max(1, p.capacity) for p in pods}
        loaded = sorted(
            (c for c in copies if c.state == CopyState.LOADED.value),
            key=lambda c: (-fullness.get(c.pod_id, 2.0), -c.since_ms),
        )
        for copy in loaded[: -change.delta]:
            await self.unloader.unload_copy(model_id=change.model_id, pod_id=copy.pod_id, kind="scaled-down", why=change.reason)

    async def drain_pod(self, pod_id: str) -> dict[str, Any]:
        """No new placements on `pod_id`; move its loaded copies elsewhere, then unload them."""
        pod = await self.live.pod(pod_id)
        if pod is None:
            raise NotFound(f"pod {pod_id!r} not found")
        await self.live.set_draining(pod_id, True)
        await self.events.record("draining", pod_id=pod_id, message="drain requested")
        moved, dropped = [], []
        for model in sorted(await self.live.pod_allocations(pod_id)):
            record = await self._pods.safe_find(model)
            others = [c for c in await self.live.copies(model) if c.pod_id != pod_id]
            if record is not None and not others:
                try:
                    deadline = time.monotonic() + self.settings.load_timeout_seconds
                    if await self.loader.place_and_load(record, exclusive=False, deadline=deadline):
                        moved.append(model)
                except MeshError as err:
                    log.warning("could not move %s off %s: %s", model, pod_id, err.message)
            await self.unloader.unload_copy(model_id=model, pod_id=pod_id, kind="evicted", why=f"pod {pod_id} drained")
            if model not in moved:
                dropped.append(model)
        await self.events.record("drained", pod_id=pod_id, message=f"moved {len(moved)}, dropped {len(dropped)}")
        return {"pod": pod_id, "moved": moved, "unloaded": dropped}


def _log_failure(task: asyncio.Task[list[str]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("re-placing lost copies failed: %s", task.exception())
