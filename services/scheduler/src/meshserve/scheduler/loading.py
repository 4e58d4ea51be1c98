"""The load path: placing one copy of a model on a pod and loading it there.

`Loader.load_first_copy` brings a model from no copy to one (it is the task that
`copies.Copies.ensure_loaded` shares between concurrent callers);
`Loader.place_and_load` is one placement attempt, also used for the extra copies of
`scaler.CopyScaler`. An attempt reads placement's views (`placement.views.ClusterViews`,
shared with `copies.Copies`), asks `placement.index.place_indexed` for a pod, evicts
the copies the plan names, reserves the copy in Redis, calls the pod's puller and
settles or releases the reservation. The outcome is recorded: an event, the measured
size in the registry, or a failure with its back-off.

Evictions go through `unloading.Unloader`, events and best-effort registry writes through
`events.EventLog`: this module calls only objects below it.

Invariants:
* across replicas the first copy is reserved with `exclusive=True`, so only one replica
  loads it; the others wait for that copy to settle;
* a failed load is recorded per (model, pod) with a TTL back-off and not retried there
  until it expires; a model-level failure (bad storage path, corrupt file) is not
  retried on other pods either: the reason is returned to the caller at once;
* a reservation is always settled or released: on a failed or cancelled load call, or
  when the reservation vanished meanwhile (the copy is then unloaded from the pod);
* a copy measured bigger than its reservation never leaves its pod over capacity when
  something else there can be evicted; the new copy itself is never the victim.

May import: `meshserve.common`, the store and placement wings, `pullers`, `unloading`,
`events`, `status`, `sizing`, `models`, `metrics`. Never imports `copies`, `scaler`,
`vmodels`, `service` or the transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from meshserve.common.backoff import backoff_delay
from meshserve.common.errors import (
    FailedPrecondition,
    MeshError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from meshserve.common.labels import model_labels
from meshserve.common.proto.meshserve.v1 import runtime_pb2
from meshserve.scheduler import metrics
from meshserve.scheduler.events import EventLog
from meshserve.scheduler.models import (
    ALL_BUSY_LOADING,
    NO_COMPATIBLE_RUNTIME,
    TOO_BIG,
    CopyState,
    PlacementConfig,
    PlacementRequest,
)
from meshserve.scheduler.placement import scan
from meshserve.scheduler.placement.index import place_indexed
from meshserve.scheduler.placement.views import ClusterViews, pod_views
from meshserve.scheduler.pullers import MODEL_FAULTS, PullerClients, model_key, storage_path
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.sizing import credible_measurement, known_size, runtime_default_size
from meshserve.scheduler.status import active_failure
from meshserve.scheduler.store.live import LiveState, PodInfo
from meshserve.scheduler.store.registry import ModelRecord, Registry
from meshserve.scheduler.unloading import Unloader

log = logging.getLogger(__name__)


def placement_config(settings: SchedulerSettings, **overrides: Any) -> PlacementConfig:
    """The placement rules from the settings (`overrides` replace single fields)."""
    s = settings
    fields: dict[str, Any] = {
        "policy": s.eviction_policy,
        "min_residency_seconds": s.min_residency_seconds,
        "usage_half_life_seconds": s.usage_half_life_seconds,
        "eviction_candidates": s.eviction_candidates,
        "stale_after_intervals": s.stale_after_intervals,
        "stale_min_seconds": s.stale_min_seconds,
    }
    return PlacementConfig(**(fields | overrides))



class Loader:
    """Places and loads copies; remembers runtime waits and wakes callers when a load ends."""

    def __init__(
        self,
        *,
        settings: SchedulerSettings,
        registry: Registry,
        live: LiveState,
        pullers: PullerClients,
        views: ClusterViews,
        clock: Callable[[], float],
        unloader: Unloader,
        events: EventLog,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.live = live
        self.pullers = pullers
        self.views = views
        self.clock = clock
        self.unloader = unloader
        self.events = events
        self._load_done = asyncio.Condition()
        self._runtime_waits: dict[str, float] = {}
        # size predictions started at registration (predict_ahead), until a placement uses one
        self._predictions: dict[str, asyncio.Task[int]] = {}
        self._writes: set[asyncio.Task[None]] = set()

    async def load_first_copy(self, model_id: str) -> None:
        deadline = time.monotonic() + self.settings.load_timeout_seconds
        record = await self.registry.find_model(model_id)
        if record is None:
            raise NotFound(f"model {model_id!r} not found: register it first (POST /v1/models)")
        failure = active_failure(
            record.last_failure, now=self.clock(), backoff_seconds=self.settings.failure_backoff_seconds
        )
        if failure is not None and failure.get("fault") == "model":
            # the files or the format are bad: every pod would fail the same way, so
            # answer with the recorded reason until the back-off expires or an admin
            # asks for a retry (POST /v1/models/{id}:load)
            raise FailedPrecondition(f"model {model_id!r} failed to load: {failure['message']}")
        attempt = 0   # polls 0.02 s doubling to 0.25 s, no jitter
        while True:
            copies = await self.live.copies(model_id)
            if any(c.state == CopyState.LOADED.value for c in copies):
                return
            if copies:  # another replica is loading it: wait for that copy
                if time.monotonic() > deadline:
                    raise Unavailable(f"model {model_id!r} is still loading; try again shortly")
                await asyncio.sleep(backoff_delay(attempt=attempt, rand=1.0, base=0.02, cap=0.25))
                attempt += 1
                continue
            done = await self.place_and_load(record, exclusive=True, deadline=deadline)
            if done:
                self._runtime_waits.pop(model_id, None)
                await self.live.stop_awaiting(model_id)
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"could not place model {model_id!r} within the load timeout")
            await asyncio.sleep(backoff_delay(attempt=attempt, rand=1.0, base=0.02, cap=0.25))
            attempt += 1

    async def place_and_load(self, record: ModelRecord, *, exclusive: bool, deadline: float, evict: bool = True) -> bool:
        """One placement attempt; True when a copy was loaded, False to try again. With
        `evict=False` a placement that needs evictions is not made (False)."""
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
        size = await self.size_for(record, compatible)
        request = PlacementRequest(
            model_id=model_id, size_bytes=size, required_labels=labels, exclude_pods=frozenset(failed)
        )
        config = placement_config(
            self.settings,
            min_copies={m: lo for m, (lo, _) in (await self.live.bounds()).items() if lo > 0},
        )
        plan = place_indexed(request, self.views.index, now=self.clock(), config=config)
        if plan.evictions and not evict:
            return False
        if plan.evictions:
            # victims are ranked by usage, which moves without a new view version: decide
            # again on the chosen pod read afresh (see placement/views.py)
            await self.views.reread({ev.pod_id for ev in plan.evictions})
            plan = place_indexed(request, self.views.index, now=self.clock(), config=config)
        if plan.pod_id is None:
            if plan.code == TOO_BIG:
                await self.events.record("failed", model_id=model_id, message=plan.reason)
                raise ResourceExhausted(f"model {model_id!r} cannot be placed: {plan.reason}")
            if plan.code == NO_COMPATIBLE_RUNTIME:
                # a runtime may be starting (scale from zero): wait within the deadline
                waited = time.monotonic() + 0.5 <= min(deadline, self._runtime_wait_until(model_id))
                if waited:
                    await asyncio.sleep(0.5)
                    return False
                self._runtime_waits.pop(model_id, None)
                await self.live.await_runtime(model_id)   # loaded when a pod for it registers
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
            await self.unloader.unload_copy(
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
        credible = response.measured and credible_measurement(measured, disk_bytes=int(response.disk_size_bytes))
        if response.measured and not credible:
            log.info(
                "%s on %s measured %d bytes (files %d bytes): not credible, the copy keeps its reservation of %d",
                model_id, pod.pod_id, measured, response.disk_size_bytes, size,
            )
            measured = size
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
        if credible:
            updates["measured_size"] = measured
        await self.events.best_effort(self.registry.update_model(model_id, **updates))
        await self.events.record(
            "placed",
            model_id=model_id,
            pod_id=pod.pod_id,
            message=f"{reason}; loaded in {elapsed:.2f}s, size {measured} bytes"
            + (
                " (measured)"
                if credible
                else f" (reserved; measured {response.size_in_bytes}, under half its files)"
                if response.measured
                else " (predicted)"
            ),
            details={
                "reserved": size,
                "size": measured,
                "measured": credible,
                "seconds": elapsed,
                **({"rejected_measurement": int(response.size_in_bytes)} if response.measured and not credible else {}),
            },
        )
        metrics.current().loaded(model_id=model_id, seconds=elapsed, reserved=size, size=measured, measured=credible)
        return True

    def _runtime_wait_until(self, model_id: str) -> float:
        return self._runtime_waits.setdefault(model_id, time.monotonic() + self.settings.runtime_wait_seconds)

    async def _wait_for_a_load(self, deadline: float) -> None:
        """Sleep until a load in this replica finishes (or a short poll for other replicas')."""
        timeout = max(0.0, min(0.5, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._load_done:
                await self._load_done.wait()

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
        plan = scan.place(
            PlacementRequest(model_id="__overcommit__", size_bytes=0),
            [view],
            now=self.clock(),
            config=placement_config(self.settings, min_residency_seconds=0.0),
        )
        if not plan.evictions:
            await self.events.record(
                "overcommitted",
                pod_id=pod_id,
                message=f"{pod.allocated - pod.capacity} bytes over capacity and nothing evictable: {plan.reason}",
            )
            return
        for ev in plan.evictions:
            await self.unloader.unload_copy(
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
        await self.events.best_effort(self.registry.update_model(record.id, last_failure=failure))
        await self.events.record("failed", model_id=record.id, pod_id=pod_id, message=message)
        metrics.current().load_failed()

    def _failure_message(self, record: ModelRecord, failed: dict[str, str]) -> str:
        pod, reason = sorted(failed.items())[0]
        return f"model {record.id!r} failed to load (pod {pod}): {reason}"

    async def size_for(self, record: ModelRecord, pods: Sequence[PodInfo]) -> int:
        """Measured size, else declared, else the puller's prediction (the one started at
        registration when there is one), else the runtime default."""
        size = known_size(record)
        if size > 0:
            return size
        ahead = self._predictions.pop(record.id, None)
        predicted = await asyncio.shield(ahead) if ahead is not None else 0
        if predicted <= 0:
            predicted = await self._predict(record, pods)
        return predicted if predicted > 0 else runtime_default_size(pods)

    def predict_ahead(self, record: ModelRecord) -> None:
        """Ask a compatible pod for the size of a model just registered, in the background,
        so that its first load does not wait for the puller's storage listing (a placement
        that comes first shares the call). Nothing happens when no compatible pod is up."""
        if known_size(record) > 0:
            return
        old = self._predictions.pop(record.id, None)
        if old is not None:
            old.cancel()  # registered again: the storage may have changed
        self._predictions[record.id] = asyncio.create_task(self._predict_registered(record))

    def forget_prediction(self, model_id: str) -> None:
        task = self._predictions.pop(model_id, None)
        if task is not None:
            task.cancel()

    async def _predict_registered(self, record: ModelRecord) -> int:
        try:
            await self.views.refresh()
        except MeshError as err:  # Redis unreachable: the placement will ask again
            log.info("size prediction for %s skipped: %s", record.id, err.message)
            return 0
        labels = model_labels(
            model_type=record.model_type,
            model_type_version=record.model_type_version,
            runtime=record.runtime,
            protocol_version=record.protocol_version,
        )
        return await self._predict(record, [p for p in self.views.pods(alive=True) if labels <= p.labels])

    async def _predict(self, record: ModelRecord, pods: Sequence[PodInfo]) -> int:
        """The first pod's PredictModelSize (0: no pod, no answer or no prediction); a
        prediction is kept in the registry in the background (a write in Postgres is not
        worth waiting for on a load's path)."""
        for pod in pods[:1]:
            started = time.monotonic()
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
                return 0
            metrics.current().sized(model_id=record.id, seconds=time.monotonic() - started)
            if response.size_in_bytes > 0:
                size = int(response.size_in_bytes)
                task = asyncio.ensure_future(self.events.best_effort(self.registry.update_model(record.id, predicted_size=size)))
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)
                return size
        return 0
