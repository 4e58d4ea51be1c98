"""The scheduler's use cases as the transports call them: registration and status, and
the composition of the floors below.

`SchedulerService` builds the scheduler's objects once, each on the ones below it, and
never hands itself to any of them:

    service (register / unregister / model status / set a vmodel with its target)
      -> vmodels.VModels       (vmodel transitions, retiring replaced models)
      -> scaler.CopyScaler     (copy scaling, pod drains)
      -> copies.Copies         (ensure loaded, unload, the shared load tasks, model state)
      -> loading.Loader, pods.Pods   (place and load one copy; pod heartbeats and liveness)
      -> unloading.Unloader    (unload one copy)
      -> events.EventLog, store.mirror.RegistryMirror, placement.views.ClusterViews,
         pullers.PullerClients, store.live.LiveState, store.registry.Registry

The transports (`server.py`, `api.py`, `app.py`) call the object that owns a use case
directly (`service.copies.ensure_loaded`, `service.pods.report_pod`,
`service.scaler.drain_pod`, ...); this class forwards none of them.

May import: every module below it (listed above), `meshserve.common`, `metrics`,
`shift`, `settings`. Never imports the transports.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from meshserve.common.errors import InvalidArgument, MeshError
from meshserve.common.storage import check_model_id, parse_storage_uri
from meshserve.scheduler import metrics
from meshserve.scheduler.copies import Copies, Endpoint
from meshserve.scheduler.events import EventLog
from meshserve.scheduler.loading import Loader, placement_config
from meshserve.scheduler.local.resources import ResourceStore
from meshserve.scheduler.placement.views import ClusterViews
from meshserve.scheduler.pods import Pods
from meshserve.scheduler.pullers import PullerClients
from meshserve.scheduler.scaler import CopyScaler
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.shift import Shift, ShiftDetector
from meshserve.scheduler.status import ModelState
from meshserve.scheduler.store.live import LiveState, now_ms
from meshserve.scheduler.store.mirror import RegistryMirror
from meshserve.scheduler.store.registry import ModelRecord, Registry
from meshserve.scheduler.unloading import Unloader
from meshserve.scheduler.vmodels import VModels

log = logging.getLogger(__name__)

__all__ = ["Endpoint", "ModelSpec", "SchedulerService"]

RETENTION_BATCH = 1000
"""Rows one retention statement deletes at most (one short transaction each)."""
RETENTION_BATCHES = 10
"""Statements per table per retention pass at most: a backlog is worked off over passes."""

@dataclass(frozen=True)
class ModelSpec:
    """What a registration carries (from the admin API, gRPC or the controller)."""

    model_id: str
    model_type: str
    model_type_version: str = ""
    runtime: str = ""
    protocol_version: str = ""
    storage_uri: str = ""
    storage_key: str = ""
    storage_path: str = ""
    storage_params: dict[str, str] = field(default_factory=dict)
    declared_size: int = 0
    min_copies: int = 0
    max_copies: int = 0


class SchedulerService:
    def __init__(
        self,
        *,
        settings: SchedulerSettings,
        registry: Registry,
        live: LiveState,
        pullers: PullerClients | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.live = live
        self.pullers = pullers or PullerClients(settings)
        self.clock = clock
        clock_now = lambda: self.clock()   # noqa: E731 - one clock: failures are stamped and aged by the same
        self.events = EventLog(registry)
        self.resources = ResourceStore(registry)   # the local resources' tombstones (retention)
        self._retention_at: float | None = None
        # the pods and the models waiting for a runtime at the last housekeeping pass
        self._pods_seen: frozenset[str] = frozenset()
        self._waiting_seen: frozenset[str] = frozenset()
        self.mirror = RegistryMirror(registry=registry, live=live)
        # placement's views, kept between decisions and read again only where they changed
        self.views = ClusterViews(
            live, pod_timeout_seconds=settings.pod_timeout_seconds, warm=placement_config(settings)
        )
        self.unloader = Unloader(live=live, pullers=self.pullers, events=self.events)
        self.loader = Loader(
            settings=settings,
            registry=registry,
            live=live,
            pullers=self.pullers,
            views=self.views,
            clock=clock_now,
            unloader=self.unloader,
            events=self.events,
        )
        self.pods = Pods(
            settings=settings, registry=registry, live=live, pullers=self.pullers, mirror=self.mirror, events=self.events
        )
        self.copies = Copies(
            settings=settings,
            registry=registry,
            live=live,
            views=self.views,
            loader=self.loader,
            unloader=self.unloader,
            pods=self.pods,
            events=self.events,
            clock=clock_now,
        )
        self.scaler = CopyScaler(
            settings=settings,
            registry=registry,
            live=live,
            pods=self.pods,
            copies=self.copies,
            loader=self.loader,
            unloader=self.unloader,
            events=self.events,
        )
        self.vmodels = VModels(
            registry=registry,
            live=live,
            copies=self.copies,
            events=self.events,
            retire_grace_seconds=settings.vmodel_retire_grace_seconds,
        )

    async def close(self) -> None:
        """Finish what must not be lost at shutdown (replaced models' retirements)."""
        await self.scaler.close()
        await self.vmodels.close()

    # -- the leader's housekeeping ---------------------------------------------------------
    async def housekeeping(self) -> None:
        """The leader's duties beside pod liveness, runtime rows and scaling (app.py's leader
        loop calls this once a pass, under the lease). Each duty is short; one that fails is
        logged and does not hold up the others:

        * re-place the copies dropped pods took with them (`scaler.CopyScaler.replace_lost`,
          in a background task of its own);
        * unregister the replaced models whose retirement a dead replica left pending
          (`vmodels.VModels.retire_due`);
        * when pods registered since the last pass: load the models whose load found no
          runtime and that one of them can take (`copies.Copies.load_awaiting`; e.g. an
          InferenceService applied before its runtime had a pod);
        * every `retention_interval_seconds`: delete old events and old tombstones of
          deleted local resources (`apply_retention`)."""
        duties: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("re-place lost copies", self._start_replacing_lost),
            ("load models that waited for a runtime", self._load_awaiting),
            ("retire replaced models", self.vmodels.retire_due),
        ]
        now = time.monotonic()
        if self._retention_at is None or now - self._retention_at >= self.settings.retention_interval_seconds:
            self._retention_at = now
            duties.append(("retention", self.apply_retention))
        for name, duty in duties:
            try:
                await duty()
            except MeshError as err:
                log.warning("leader duty %r failed: %s", name, err.message)

    async def _start_replacing_lost(self) -> None:
        self.scaler.start_replacing_lost()

    async def _load_awaiting(self) -> None:
        """`copies.load_awaiting` when a pod registered or a model began to wait since the
        last pass (a pass without either would find the same answer)."""
        pods = frozenset(await self.live.pod_heads())
        waiting = frozenset(await self.live.awaiting_runtime())
        if waiting and (pods - self._pods_seen or waiting - self._waiting_seen):
            await self.copies.load_awaiting()
        self._pods_seen, self._waiting_seen = pods, waiting

    async def apply_retention(self, *, now: dt.datetime | None = None) -> dict[str, int]:
        """Delete the events and the local resources' tombstones the retention settings no
        longer keep (as of `now`, default the clock), in bounded batches; how many of each."""
        s = self.settings
        now = now or dt.datetime.now(dt.UTC)
        events = await self.registry.prune_events(
            before=now - dt.timedelta(days=s.event_retention_days) if s.event_retention_days else None,
            keep=s.event_retention_max_rows,
            batch=RETENTION_BATCH,
            batches=RETENTION_BATCHES,
        )
        tombstones = 0
        if s.resource_tombstone_retention_hours:
            tombstones = await self.resources.prune_tombstones(
                before=now - dt.timedelta(hours=s.resource_tombstone_retention_hours),
                batch=RETENTION_BATCH,
                batches=RETENTION_BATCHES,
            )
        if events or tombstones:
            log.info("retention: deleted %d events and %d tombstones of deleted resources", events, tombstones)
        return {"events": events, "tombstones": tombstones}

    # -- registration ----------------------------------------------------------------------
    async def register_model(self, spec: ModelSpec, *, load_now: bool = False, wait: bool = False) -> ModelState:
        """Register (or register again) a model; `load_now` or minCopies start loading it in
        the background, `wait` (with `load_now`) returns once a copy is loaded."""
        check_model_id(spec.model_id)
        if not spec.model_type:
            raise InvalidArgument("model type (format) is required, e.g. sklearn")
        if spec.storage_uri and spec.storage_path:
            raise InvalidArgument("give either storage_uri or storage_path, not both")
        if not spec.storage_uri and not spec.storage_path:
            raise InvalidArgument("must have either the storageUri or the storage.path")
        if spec.storage_uri:
            parse_storage_uri(spec.storage_uri, spec.storage_params)  # validates the scheme
        if spec.max_copies and spec.min_copies > spec.max_copies:
            raise InvalidArgument(f"minCopies ({spec.min_copies}) is above maxCopies ({spec.max_copies})")
        record = await self.registry.create_model(
            {
                "id": spec.model_id,
                "model_type": spec.model_type,
                "model_type_version": spec.model_type_version,
                "runtime": spec.runtime,
                "protocol_version": spec.protocol_version,
                "storage_uri": spec.storage_uri,
                "storage_key": spec.storage_key,
                "storage_path": spec.storage_path,
                "storage_params": dict(spec.storage_params),
                "declared_size": spec.declared_size,
                "min_copies": spec.min_copies,
                "max_copies": spec.max_copies,
            }
        )
        await self.live.add_model(spec.model_id)
        await self.live.set_bounds(spec.model_id, min_copies=spec.min_copies, max_copies=spec.max_copies)
        await self.events.record("registered", model_id=spec.model_id, message=f"format {spec.model_type}")
        self.loader.predict_ahead(record)
        if load_now or spec.min_copies > 0:
            # minCopies are placed at registration: the first copy now, the rest by the
            # scaling pass that follows it
            self.copies.spawn(self._ensure_quietly(spec.model_id, scale=spec.min_copies > 1))
        if wait and load_now:
            await self.copies.ensure_loaded(spec.model_id)
        return await self.model_state(spec.model_id)

    async def _ensure_quietly(self, model_id: str, *, scale: bool = False) -> None:
        try:
            await self.copies.ensure_loaded(model_id)
            if scale:
                await self.scaler.scale_once(only=[model_id])
        except MeshError as err:
            log.warning("background load of %s failed: %s", model_id, err.message)

    async def unregister_model(self, model_id: str) -> None:
        """Unload every copy and forget the model (NotFound when nothing knows it)."""
        await self.copies.drop_model(model_id)

    # -- status ----------------------------------------------------------------------------
    async def model_state(self, model_id: str, record: ModelRecord | None = None) -> ModelState:
        return await self.copies.model_state(model_id, record)

    # -- vmodels ---------------------------------------------------------------------------
    async def set_vmodel(
        self,
        *,
        vmodel_id: str,
        target_model_id: str,
        target: ModelSpec | None = None,
        owner: str = "",
        auto_delete: bool = False,
        force: bool = False,
        load_now: bool = True,
        update_only: bool = False,
        expected_target_model_id: str = "",
        wait: bool = False,
    ) -> None:
        """SetVModel: register `target` first when given and the target model is not
        registered yet; then point the vmodel at the target (`vmodels.VModels.set_vmodel`,
        which checks `update_only` / `expected_target_model_id` / the owner in the write's
        transaction); `wait` returns once the target is loaded."""
        if target is not None and await self.registry.find_model(target_model_id) is None:
            await self.register_model(target, load_now=load_now)
        await self.vmodels.set_vmodel(
            vmodel_id=vmodel_id,
            target_model_id=target_model_id,
            owner=owner,
            auto_delete=auto_delete,
            force=force,
            load_now=load_now,
            update_only=update_only,
            expected_target_model_id=expected_target_model_id,
        )
        if wait:
            await self.copies.ensure_loaded(target_model_id)

    # -- usage and counts ------------------------------------------------------------------
    async def publish_model_counts(self) -> metrics.Counts:
        """Upstream's deployment-wide model counts, from live state (the leader's duty)."""
        ids = await self.live.model_ids()
        copies = await self.live.copies_many(ids)
        failed = await self.live.failed_models()
        counts = metrics.model_counts(ids, {m: [c.state for c in cs] for m, cs in copies.items()}, failed)
        metrics.current().model_counts.publish(counts)
        return counts

    async def report_usage(self, usage: dict[str, int]) -> None:
        await self.live.add_usage(usage, at_ms=now_ms(), half_life_seconds=self.settings.usage_half_life_seconds)

    async def watch_for_shift(self, detector: ShiftDetector) -> Shift | None:
        """The leader's step of shift detection (`shift.py`): feed the cluster's request and
        miss counters to `detector`; when it reports that the popular set moved, forget every
        request count, so old and new models compete on what happens from now on."""
        requests, loads = await self.live.traffic()
        shift = detector.observe(now=self.clock(), requests=requests, loads=loads)
        if shift is not None:
            n = await self.live.reset_usage()
            log.info("usage counts of %d models forgotten: %s", n, shift)
            await self.events.record("usage-reset", message=f"{shift}; forgot the request counts of {n} models")
        return shift
