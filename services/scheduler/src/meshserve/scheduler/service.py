"""The scheduler's use cases: register models, ensure copies are loaded, keep routes.

Reads state from the registry (Postgres) and live state (Redis), asks `placement.place`
for a decision, and applies it: reserve in Redis (atomic), call the puller, settle or
release, record the event, publish the route change. Transports (`server.py`,
`api.py`) only convert to and from this module's values. Virtual models are kept by
`vmodels.VModels` (`SchedulerService.vmodels`), which builds on these use cases, and so
does `scaler.CopyScaler` (`.scaler`: copy scaling, pod drains); pod heartbeats, liveness
and removal are `pods.Pods` (`.pods`). The service keeps thin methods for their callers.

Concurrency rules:
* concurrent `ensure_loaded` calls for one model in this replica share one task;
* across replicas the first copy is reserved with `exclusive=True`, so only one
  replica loads it; the others wait for that copy to settle;
* a failed load is recorded per (model, pod) with a TTL back-off and not retried there
  until it expires; a model-level failure (bad storage path, corrupt file) is not
  retried on other pods either: the reason is returned to the caller at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from meshserve.common.coalesce import Coalesced
from meshserve.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from meshserve.common.labels import model_labels
from meshserve.common.proto.meshserve.v1 import runtime_pb2
from meshserve.common.storage import check_model_id, parse_storage_uri
from meshserve.scheduler import placement
from meshserve.scheduler.live import CopyRecord, LiveState, PodInfo, now_ms
from meshserve.scheduler.models import (
    ALL_BUSY_LOADING,
    NO_COMPATIBLE_RUNTIME,
    TOO_BIG,
    CopyState,
    PlacementConfig,
    PlacementRequest,
)
from meshserve.scheduler.placement_index import place_indexed
from meshserve.scheduler.pods import Pods
from meshserve.scheduler.pullers import MODEL_FAULTS, PullerClients, model_key, storage_path
from meshserve.scheduler.registry import ModelRecord, Registry
from meshserve.scheduler.scaler import CopyScaler
from meshserve.scheduler.scaling import CopyChange
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.shift import Shift, ShiftDetector
from meshserve.scheduler.sizing import known_size, runtime_default_size
from meshserve.scheduler.status import (
    LOADED,
    LOADING,
    LOADING_FAILED,
    NOT_FOUND,
    NOT_LOADED,
    ModelState,
)
from meshserve.scheduler.views import ClusterViews, pod_views
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
        self._load_done = asyncio.Condition()
        self._runtime_waits: dict[str, float] = {}
        # placement's views, kept between decisions and read again only where they changed
        self.views = ClusterViews(
            live, pod_timeout_seconds=settings.pod_timeout_seconds, warm=self._placement_config()
        )
        self.vmodels = VModels(registry=registry, live=live, models=self, event=self._event)
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
        await self.registry.create_model(
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
        copies = await self.live.copies(model_id)
        if any(c.state == CopyState.LOADED.value for c in copies):
            return ModelState(LOADED, (), tuple(copies)), await self.endpoints(copies)
        task = self._loads.get(model_id)
        if task is None:
            task = asyncio.create_task(self._load_first_copy(model_id))
            self._loads[model_id] = task
            task.add_done_callback(lambda _t, m=model_id: self._loads.pop(m, None))
            if miss:   # after the task is shared: concurrent callers must join it
                await self.live.count_load()
        await asyncio.shield(task)
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

    async def _load_first_copy(self, model_id: str) -> None:
        deadline = time.monotonic() + self.settings.load_timeout_seconds
        record = await self.registry.find_model(model_id)
        if record is None:
            raise NotFound(f"model {model_id!r} not found: register it first (POST /v1/models)")
        failure = self._active_failure(record)
        if failure is not None and failure.get("fault") == "model":
            # the files or the format are bad: every pod would fail the same way, so
            # answer with the recorded reason until the back-off expires or an admin
            # asks for a retry (POST /v1/models/{id}:load)
            raise FailedPrecondition(f"model {model_id!r} failed to load: {failure['message']}")
        backoff = 0.02
        while True:
            copies = await self.live.copies(model_id)
            if any(c.state == CopyState.LOADED.value for c in copies):
                return
            if copies:  # another replica is loading it: wait for that copy
                if time.monotonic() > deadline:
                    raise Unavailable(f"model {model_id!r} is still loading; try again shortly")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.25)
                continue
            done = await self.place_and_load(record, exclusive=True, deadline=deadline)
            if done:
                self._runtime_waits.pop(model_id, None)
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"could not place model {model_id!r} within the load timeout")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.25)

    async def place_and_load(self, record: ModelRecord, *, exclusive: bool, deadline: float) -> bool:
        """One placement attempt; True when a copy was loaded, False to try again."""
        model_id = record.id
        await self.views.refresh()
        pods = self.views.pods(alive=True)
        labels = model_labels(
            model_type=record.model_type,
            model_type_version=record.model_type_version,
            runtime=record.runtime,
            protocol_version=record.protocol_version,
        )
        compatible = [p for p in pods if labels <= p.labels]
        failed = await self.live.failed_pods(model_id, [p.pod_id for p in compatible])
        if compatible and len(failed) == len(compatible):
            reason = self._failure_message(record, failed)
            raise FailedPrecondition(reason)
        size = await self._size_for(record, compatible)
        request = PlacementRequest(
            model_id=model_id, size_bytes=size, required_labels=labels, exclude_pods=frozenset(failed)
        )
        config = self._placement_config(
            min_copies={m: lo for m, (lo, _) in (await self.live.bounds()).items() if lo > 0},
        )
        plan = place_indexed(request, self.views.index, now=self.clock(), config=config)
        if plan.evictions:
            # victims are ranked by usage, which moves without a new view version: decide
            # again on the chosen pod read afresh (see views.py)
            await self.views.reread({ev.pod_id for ev in plan.evictions})
            plan = place_indexed(request, self.views.index, now=self.clock(), config=config)
        if plan.pod_id is None:
            if plan.code == TOO_BIG:
                await self._event("failed", model_id=model_id, message=plan.reason)
                raise ResourceExhausted(f"model {model_id!r} cannot be placed: {plan.reason}")
            if plan.code == NO_COMPATIBLE_RUNTIME:
                # a runtime may be starting (scale from zero): wait within the deadline
                waited = time.monotonic() + 0.5 <= min(deadline, self._runtime_wait_until(model_id))
                if waited:
                    await asyncio.sleep(0.5)
                    return False
                self._runtime_waits.pop(model_id, None)
                kind = "|".join(sorted(labels))
                raise Unavailable(
                    f"There are no running instances that meet the label requirements of type {kind}: "
                    f"[{', '.join(sorted(labels))}] (model {model_id!r}; is a runtime for it running?)"
                )
            if plan.code == ALL_BUSY_LOADING:
                await self._wait_for_a_load(deadline)
                return False
            raise ResourceExhausted(f"model {model_id!r} cannot be placed: {plan.reason}")
        for ev in plan.evictions:
            await self.unload_copy(
                model_id=ev.model_id, pod_id=ev.pod_id, kind="evicted", why=f"to make room for {model_id}"
            )
        ok, why = await self.live.reserve(model_id=model_id, pod_id=plan.pod_id, size=size, exclusive=exclusive)
        if not ok:
            log.debug("reservation of %s on %s refused: %s", model_id, plan.pod_id, why)
            return False
        pod = self.views.info(plan.pod_id)
        if pod is None:   # removed meanwhile (its reservation failed or was dropped with it)
            return False
        return await self._load_on(record, pod=pod, size=size, reason=plan.reason, deadline=deadline)

    async def _load_on(self, record: ModelRecord, *, pod: PodInfo, size: int, reason: str, deadline: float) -> bool:
        model_id = record.id
        request = runtime_pb2.LoadModelRequest(
            model_id=model_id,
            model_type=record.model_type,
            model_path=storage_path(record),
            model_key=model_key(record),
        )
        started = time.monotonic()
        timeout = max(1.0, deadline - started)
        try:
            try:
                response = await self.pullers.stub(pod.management_address).LoadModel(request, timeout=timeout)
            finally:
                await self._notify_load_done()
        except grpc.aio.AioRpcError as err:
            await self.live.release(model_id=model_id, pod_id=pod.pod_id)
            message = err.details() or err.code().name
            model_fault = err.code() in MODEL_FAULTS
            await self._record_failure(record, pod_id=pod.pod_id, message=message, model_fault=model_fault)
            if model_fault:
                raise FailedPrecondition(f"model {model_id!r} failed to load: {message}") from err
            log.warning("load of %s on %s failed (%s): %s; trying another pod", model_id, pod.pod_id, err.code().name, message)
            return False
        except asyncio.CancelledError:
            await self.live.release(model_id=model_id, pod_id=pod.pod_id)
            raise
        measured = int(response.size_in_bytes) or size
        if not await self.live.settle(model_id=model_id, pod_id=pod.pod_id, size=measured):
            # the reservation vanished (pod removed meanwhile): undo on the pod
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.pullers.stub(pod.management_address).UnloadModel(
                    runtime_pb2.UnloadModelRequest(model_id=model_id), timeout=10
                )
            return False
        elapsed = time.monotonic() - started
        if measured > size:
            await self._relieve_overcommit(pod.pod_id, keep=model_id)
        updates: dict[str, Any] = {"last_failure": None}
        if response.measured:
            updates["measured_size"] = measured
        await self._best_effort(self.registry.update_model(model_id, **updates))
        await self._event(
            "placed",
            model_id=model_id,
            pod_id=pod.pod_id,
            message=f"{reason}; loaded in {elapsed:.2f}s, size {measured} bytes"
            + (" (measured)" if response.measured else " (predicted)"),
            details={"reserved": size, "size": measured, "measured": response.measured, "seconds": elapsed},
        )
        return True

    def _runtime_wait_until(self, model_id: str) -> float:
        return self._runtime_waits.setdefault(model_id, time.monotonic() + self.settings.runtime_wait_seconds)

    async def _wait_for_a_load(self, deadline: float) -> None:
        """Sleep until a load in this replica finishes (or a short poll for other replicas')."""
        timeout = max(0.0, min(0.5, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with self._load_done:
                await asyncio.wait_for(self._load_done.wait(), timeout)

    async def _notify_load_done(self) -> None:
        async with self._load_done:
            self._load_done.notify_all()

    async def _relieve_overcommit(self, pod_id: str, *, keep: str) -> None:
        """A copy measured bigger than its reservation can push a pod over capacity:
        evict (by the configured policy) until it fits again, never the new copy."""
        pod = await self.live.pod(pod_id)
        if pod is None or pod.allocated <= pod.capacity:
            return
        views = pod_views(await self.live.placement_snapshot([pod_id]))
        if not views:
            return  # the pod was removed meanwhile
        [(_, view)] = views
        view = dataclasses.replace(
            view, copies=tuple(dataclasses.replace(c, in_flight=1) if c.model_id == keep else c for c in view.copies)
        )
        plan = placement.place(
            PlacementRequest(model_id="__overcommit__", size_bytes=0),
            [view],
            now=self.clock(),
            config=self._placement_config(min_residency_seconds=0.0),
        )
        if not plan.evictions:
            await self._event(
                "overcommitted",
                pod_id=pod_id,
                message=f"{pod.allocated - pod.capacity} bytes over capacity and nothing evictable: {plan.reason}",
            )
            return
        for ev in plan.evictions:
            await self.unload_copy(
                model_id=ev.model_id,
                pod_id=pod_id,
                kind="evicted",
                why=f"{keep} measured bigger than reserved; {pod_id} was over capacity",
            )

    async def _record_failure(self, record: ModelRecord, *, pod_id: str, message: str, model_fault: bool) -> None:
        failure = {
            "reason": "ModelLoadFailed",
            "message": message,
            "pod_id": pod_id,
            "fault": "model" if model_fault else "pod",
            "time_ms": int(self.clock() * 1000),
        }
        await self.live.record_failure(
            model_id=record.id, pod_id=pod_id, reason=message, ttl_seconds=self.settings.failure_backoff_seconds
        )
        await self._best_effort(self.registry.update_model(record.id, last_failure=failure))
        await self._event("failed", model_id=record.id, pod_id=pod_id, message=message)

    def _failure_message(self, record: ModelRecord, failed: dict[str, str]) -> str:
        pod, reason = sorted(failed.items())[0]
        return f"model {record.id!r} failed to load (pod {pod}): {reason}"

    async def _size_for(self, record: ModelRecord, pods: Sequence[PodInfo]) -> int:
        """Measured size, else declared, else the puller's prediction, else the runtime default."""
        size = known_size(record)
        if size > 0:
            return size
        for pod in pods[:1]:
            try:
                response = await self.pullers.stub(pod.management_address).PredictModelSize(
                    runtime_pb2.PredictModelSizeRequest(
                        model_id=record.id,
                        model_type=record.model_type,
                        model_path=storage_path(record),
                        model_key=model_key(record),
                    ),
                    timeout=5,
                )
            except grpc.aio.AioRpcError as err:
                log.info("size prediction for %s failed: %s", record.id, err.details())
                break
            if response.size_in_bytes > 0:
                await self._best_effort(self.registry.update_model(record.id, predicted_size=response.size_in_bytes))
                return int(response.size_in_bytes)
        return runtime_default_size(pods)

    async def unload_copy(self, *, model_id: str, pod_id: str, kind: str, why: str) -> None:
        """Release the copy in live state, then tell its pod. When the release finds no copy
        (another scheduler replica evicted it first, acting on the same view), nothing is
        recorded and the pod is not told: the model may be loading there again by now."""
        pod = await self.live.pod(pod_id)
        if not await self.live.release(model_id=model_id, pod_id=pod_id):
            log.debug("%s of %s on %s: already gone", kind, model_id, pod_id)
            return
        # recorded at the state change, not after the pod's (serialised, maybe slow) unload
        await self._event(kind, model_id=model_id, pod_id=pod_id, message=why)
        if pod is not None:
            try:
                await self.pullers.stub(pod.management_address).UnloadModel(
                    runtime_pb2.UnloadModelRequest(model_id=model_id), timeout=30
                )
            except grpc.aio.AioRpcError as err:
                log.warning("unload of %s on %s failed: %s", model_id, pod_id, err.details())

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

    def _placement_config(self, **overrides: Any) -> PlacementConfig:
        """The placement rules from the settings (`overrides` replace single fields)."""
        s = self.settings
        fields: dict[str, Any] = {
            "policy": s.eviction_policy,
            "min_residency_seconds": s.min_residency_seconds,
            "usage_half_life_seconds": s.usage_half_life_seconds,
            "eviction_candidates": s.eviction_candidates,
            "stale_after_intervals": s.stale_after_intervals,
            "stale_min_seconds": s.stale_min_seconds,
        }
        return PlacementConfig(**(fields | overrides))

    # -- events ----------------------------------------------------------------------------
    async def _event(self, kind: str, **kwargs: Any) -> None:
        await self._best_effort(self.registry.add_event(kind=kind, **kwargs))

    async def _best_effort(self, coro: Any) -> None:
        try:
            await coro
        except Unavailable as err:
            log.warning("registry write skipped: %s", err.message)
