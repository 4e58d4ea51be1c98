"""The scheduler's use cases: register models, ensure copies are loaded, keep routes.

Reads state from the registry (Postgres) and live state (Redis), decides, and applies
the decision: record the event, publish the route change. Transports (`server.py`,
`api.py`) only convert to and from this module's values. Placing and loading a copy
(reserve in Redis, call the puller, settle or release) is `loading.Loader`
(`SchedulerService.loader`). Virtual models are kept by `vmodels.VModels` (`.vmodels`),
which builds on these use cases, and so does `scaler.CopyScaler` (`.scaler`: copy
scaling, pod drains); pod heartbeats, liveness and removal are `pods.Pods` (`.pods`).
The service keeps thin methods for their callers.

Concurrency rules:
* concurrent `ensure_loaded` calls for one model in this replica share one task
  (`Loader.load_first_copy`);
* across replicas the first copy is reserved with `exclusive=True`, so only one
  replica loads it; the others wait for that copy to settle;
* a failed load is recorded per (model, pod) with a TTL back-off and not retried there
  until it expires; a model-level failure (bad storage path, corrupt file) is not
  retried on other pods either: the reason is returned to the caller at once
  (`loading.py` keeps these two).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from meshserve.common.coalesce import Coalesced
from meshserve.common.errors import InvalidArgument, MeshError, NotFound, Unavailable
from meshserve.common.proto.meshserve.v1 import runtime_pb2
from meshserve.common.storage import check_model_id, parse_storage_uri
from meshserve.scheduler import metrics
from meshserve.scheduler.loading import Loader, placement_config
from meshserve.scheduler.models import CopyState
from meshserve.scheduler.placement.views import ClusterViews
from meshserve.scheduler.pods import Pods
from meshserve.scheduler.pullers import PullerClients
from meshserve.scheduler.scaler import CopyScaler
from meshserve.scheduler.scaling import CopyChange
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.shift import Shift, ShiftDetector
from meshserve.scheduler.status import (
    LOADED,
    LOADING,
    LOADING_FAILED,
    NOT_FOUND,
    NOT_LOADED,
    ModelState,
)
from meshserve.scheduler.store.live import CopyRecord, LiveState, now_ms
from meshserve.scheduler.store.registry import ModelRecord, Registry
from meshserve.scheduler.vmodels import VModels

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Endpoint:
    pod_id: str
    grpc_address: str
    rest_address: str


ENSURE_ROUNDS = 3
"""Loads `ensure_loaded` starts for one call at most, when a loaded copy vanishes before it answers."""


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
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # placement's views, kept between decisions and read again only where they changed
        self.views = ClusterViews(
            live, pod_timeout_seconds=settings.pod_timeout_seconds, warm=placement_config(settings)
        )
        self.loader = Loader(
            settings=settings,
            registry=registry,
            live=live,
            pullers=self.pullers,
            views=self.views,
            clock=lambda: self.clock(),   # one clock: failures are stamped and aged by the same
            copies=self,
            active_failure=self._active_failure,
            event=self._event,
            best_effort=self._best_effort,
        )
        self.vmodels = VModels(
            registry=registry,
            live=live,
            models=self,
            event=self._event,
            retire_grace_seconds=settings.vmodel_retire_grace_seconds,
        )
        self.pods = Pods(
            settings=settings,
            registry=registry,
            live=live,
            pullers=self.pullers,
            mirror_before_adopting=self._mirror_before_adopting,
            event=self._event,
        )
        self.scaler = CopyScaler(
            settings=settings, registry=registry, live=live, pods=self.pods, copies=self, event=self._event
        )
        # the registry mirror: concurrent callers share the marker check and any rebuild
        self._mirror = Coalesced(self._ensure_mirror)
        self._mirror_synced = False   # this process has written the mirror once

    async def close(self) -> None:
        """Finish what must not be lost at shutdown (replaced models' retirements)."""
        await self.vmodels.close()

    # -- the registry mirror ---------------------------------------------------------------
    async def sync_registry_mirror(self) -> None:
        """Copy the registry's model and vmodel ids into Redis (router snapshots read them)."""
        ids = await self.registry.all_model_ids()
        vmodels, _ = await self.registry.list_vmodels(limit=1_000_000)
        bounds = await self.registry.all_bounds()
        await self.live.sync_registry(
            model_ids=ids, vmodels={v.id: v.active_model_id for v in vmodels}, bounds=bounds
        )

    async def ensure_registry_mirror(self) -> None:
        """Rebuild the Redis mirror of the registry when this process has not written it yet
        (at start: it repairs drift, such as a registration that reached Postgres only) or
        when its marker says Redis lost it (`LiveState.mirror_current`: missing, or written
        before Redis last started). Called by the mirror loop (app.py) and before a copy is
        adopted (`report_pod`).

        Concurrent calls share one run of the check (`Coalesced`: each call returns after a
        run that began after it); a run that follows a rebuild finds the marker current, so
        a burst of calls after a Redis restart costs one rebuild. A failed rebuild (Postgres
        down) raises to every call that shared it; the next call tries again."""
        await self._mirror()

    async def _ensure_mirror(self) -> None:
        if self._mirror_synced and await self.live.mirror_current():
            return
        await self.sync_registry_mirror()
        log.info("registry mirror written to Redis (%s)", "its marker was missing or stale" if self._mirror_synced else "start-up")
        self._mirror_synced = True

    async def _mirror_before_adopting(self, pod_id: str) -> None:
        """Make sure the registry mirror is in Redis before copies are adopted into it. An
        adopted copy's route is published for the models the mirror lists as of the adoption:
        adopted into a Redis that lost the mirror, its route would go out as a removal, and
        routers would drop the model (their fallback too) until the mirror is rebuilt. A
        failed rebuild does not stop the adoption (live state must say what pods hold); the
        mirror loop tries again."""
        try:
            await self.ensure_registry_mirror()
        except Exception as err:   # Postgres down, mostly (Unavailable); a heartbeat must not fail on it
            log.warning("adopting copies on %s without the registry mirror in Redis: %s", pod_id, err)

    # -- registration ----------------------------------------------------------------------
    async def register_model(self, spec: ModelSpec, *, load_now: bool = False) -> ModelState:
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
        await self._event("registered", model_id=spec.model_id, message=f"format {spec.model_type}")
        self.loader.predict_ahead(record)
        if load_now or spec.min_copies > 0:
            # minCopies are placed at registration: the first copy now, the rest by the
            # scaling pass that follows it
            task = asyncio.create_task(self._ensure_quietly(spec.model_id, scale=spec.min_copies > 1))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return await self.model_state(spec.model_id)

    async def _ensure_quietly(self, model_id: str, *, scale: bool = False) -> None:
        try:
            await self.ensure_loaded(model_id)
            if scale:
                await self.scale_once(only=[model_id])
        except MeshError as err:
            log.warning("background load of %s failed: %s", model_id, err.message)

    def load_in_background(self, model_id: str) -> None:
        """Start loading a first copy of `model_id`; a failure is logged, not raised."""
        self._spawn(self._ensure_quietly(model_id))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def unregister_model(self, model_id: str) -> None:
        record = await self.registry.find_model(model_id)
        copies = await self.live.copies(model_id)
        if record is None and not copies:
            raise NotFound(f"model {model_id!r} not found")
        for copy in copies:
            await self.unload_copy(model_id=model_id, pod_id=copy.pod_id, kind="unloaded", why="model unregistered")
        self.loader.forget_prediction(model_id)
        await self.registry.delete_model(model_id)
        await self.live.remove_model(model_id)
        await self.live.clear_failures(model_id)
        await self._event("unregistered", model_id=model_id)

    # -- status ----------------------------------------------------------------------------
    async def model_state(self, model_id: str, record: ModelRecord | None = None) -> ModelState:
        record = record or await self.registry.find_model(model_id)
        if record is None:
            return ModelState(NOT_FOUND, (f"model {model_id!r} not found",), ())
        copies = tuple(await self.live.copies(model_id))
        failure = self._active_failure(record)
        if any(c.state == CopyState.LOADED.value for c in copies):
            status = LOADED
        elif copies:
            status = LOADING
        elif failure is not None:
            status = LOADING_FAILED
        else:
            status = NOT_LOADED
        errors = (failure["message"],) if failure and status == LOADING_FAILED else ()
        return ModelState(status, errors, copies, failure)

    def _active_failure(self, record: ModelRecord) -> dict[str, Any] | None:
        failure = record.last_failure
        if not failure:
            return None
        age = self.clock() - float(failure.get("time_ms", 0)) / 1000
        return failure if age < self.settings.failure_backoff_seconds else None

    # -- loading ---------------------------------------------------------------------------
    async def ensure_loaded(
        self, model_id: str, *, suspect_pods: Sequence[str] = (), miss: bool = False
    ) -> tuple[ModelState, list[Endpoint]]:
        """Return the loaded copies of `model_id`, loading a first copy if there is none.

        `suspect_pods` are pods whose copy failed a caller: each is checked with its
        puller first, and a copy that is not really there is dropped (the whole pod when
        it does not answer or its model server is down). `miss`: a request found no copy
        (the router asks); a load it starts is counted for shift detection (`shift.py`),
        unlike loads for registrations, scaling or drains."""
        for pod_id in suspect_pods:
            await self.pods.check_suspect(pod_id, model_id)
        # a copy just loaded can be gone before the answer (evicted at once on a full cluster, or
        # its pod dropped): load again, a bounded number of times, rather than answer no endpoint
        for attempt in range(ENSURE_ROUNDS):
            copies = await self.live.copies(model_id)
            if any(c.state == CopyState.LOADED.value for c in copies):
                break
            task = self._loads.get(model_id)
            if task is None:
                task = asyncio.create_task(self.loader.load_first_copy(model_id))
                self._loads[model_id] = task
                task.add_done_callback(lambda _t, m=model_id: self._loads.pop(m, None))
                if miss and attempt == 0:   # after the task is shared: concurrent callers must join it
                    await self.live.count_load()
            await asyncio.shield(task)
        else:
            copies = await self.live.copies(model_id)
        return ModelState(LOADED, (), tuple(copies)), await self.endpoints(copies)

    async def retry_load(self, model_id: str) -> tuple[ModelState, list[Endpoint]]:
        """Forget recorded failures (an admin fixed the files) and load again."""
        await self.registry.get_model(model_id)
        await self.registry.update_model(model_id, last_failure=None)
        await self.live.clear_failures(model_id)
        return await self.ensure_loaded(model_id)

    async def endpoints(self, copies: Sequence[CopyRecord]) -> list[Endpoint]:
        loaded = [c.pod_id for c in copies if c.state == CopyState.LOADED.value]
        if not loaded:
            return []
        await self.views.refresh()
        pods = {p.pod_id: p for p in self.views.pods(alive=False)}
        return [
            Endpoint(pod_id=p, grpc_address=pods[p].grpc_address, rest_address=pods[p].rest_address)
            for p in loaded
            if p in pods
        ]

    async def place_and_load(self, record: ModelRecord, *, exclusive: bool, deadline: float) -> bool:
        """One placement attempt; True when a copy was loaded, False to try again (`loading.py`)."""
        return await self.loader.place_and_load(record, exclusive=exclusive, deadline=deadline)

    async def unload_copy(self, *, model_id: str, pod_id: str, kind: str, why: str) -> None:
        """Release the copy in live state, then tell its pod. When the release finds no copy
        (another scheduler replica evicted it first, acting on the same view), nothing is
        recorded and the pod is not told: the model may be loading there again by now."""
        pod = await self.live.pod(pod_id)
        age_ms = await self._idle_ms(model_id, pod_id) if kind == "evicted" else None
        if not await self.live.release(model_id=model_id, pod_id=pod_id):
            log.debug("%s of %s on %s: already gone", kind, model_id, pod_id)
            return
        # recorded at the state change, not after the pod's (serialised, maybe slow) unload
        await self._event(kind, model_id=model_id, pod_id=pod_id, message=why)
        metrics.current().removed(model_id=model_id, kind=kind, age_ms=age_ms)
        if pod is not None:
            started = time.monotonic()
            try:
                await self.pullers.stub(pod.management_address).UnloadModel(
                    runtime_pb2.UnloadModelRequest(model_id=model_id), timeout=30
                )
            except grpc.aio.AioRpcError as err:
                log.warning("unload of %s on %s failed: %s", model_id, pod_id, err.details())
                metrics.current().unloaded(model_id=model_id, seconds=time.monotonic() - started, ok=False)
            else:
                metrics.current().unloaded(model_id=model_id, seconds=time.monotonic() - started, ok=True)

    async def _idle_ms(self, model_id: str, pod_id: str) -> float | None:
        """How long the copy on `pod_id` has gone unused (since its load when never used):
        upstream's age at eviction. None when live state does not say."""
        _, last_used = await self.live.usage(model_id)
        since = next((c.since_ms for c in await self.live.copies(model_id) if c.pod_id == pod_id), 0)
        used = max(int(last_used), since)
        return float(now_ms() - used) if used > 0 else None

    async def publish_model_counts(self) -> metrics.Counts:
        """Upstream's deployment-wide model counts, from live state (the leader's duty)."""
        ids = await self.live.model_ids()
        copies = await self.live.copies_many(ids)
        failed = await self.live.failed_models()
        counts = metrics.model_counts(ids, {m: [c.state for c in cs] for m, cs in copies.items()}, failed)
        metrics.current().model_counts.publish(counts)
        return counts

    async def unload(self, model_id: str) -> int:
        copies = await self.live.copies(model_id)
        for copy in copies:
            await self.unload_copy(model_id=model_id, pod_id=copy.pod_id, kind="unloaded", why="requested by admin")
        return len(copies)

    # -- pods and copy scaling: pods.Pods and scaler.CopyScaler do the work ----------------
    async def report_pod(self, fields: dict[str, Any], loaded_model_ids: Sequence[str]) -> None:
        await self.pods.report_pod(fields, loaded_model_ids)

    async def pod_leaving(self, pod_id: str) -> None:
        await self.pods.pod_leaving(pod_id)

    async def remove_dead_pods(self) -> list[str]:
        return await self.pods.remove_dead_pods()

    async def sync_runtimes(self) -> list[str]:
        return await self.pods.sync_runtimes()

    async def scale_once(self, *, only: Sequence[str] | None = None) -> list[CopyChange]:
        return await self.scaler.scale_once(only=only)

    async def drain_pod(self, pod_id: str) -> dict[str, Any]:
        return await self.scaler.drain_pod(pod_id)

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
            await self._event("usage-reset", message=f"{shift}; forgot the request counts of {n} models")
        return shift

    # -- events ----------------------------------------------------------------------------
    async def _event(self, kind: str, **kwargs: Any) -> None:
        await self._best_effort(self.registry.add_event(kind=kind, **kwargs))

    async def _best_effort(self, coro: Any) -> None:
        try:
            await coro
        except Unavailable as err:
            log.warning("registry write skipped: %s", err.message)
