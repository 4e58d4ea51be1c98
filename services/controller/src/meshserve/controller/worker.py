"""The reconcile loop against Kubernetes: informers -> coalescing queue -> pure planners -> writes.

Owns: which keys are enqueued for which watch event, the per-namespace runtime timers
(`RuntimeRecord`s), the live `ServingConfig`/`StorageConfig`, and the I/O that carries out a
plan (scheduler calls here; status merge-patches through the `/status` subresource and
Deployment create/patch/scale/delete through apps/v1 in `kube_writes`), and which events it
reports through its `EventRecorder`: InvalidConfig (on the ConfigMap) when a model-serving-config update is rejected,
InvalidSpec (on the CR) on every reconcile of an invalid spec (the recorder de-duplicates), and
ScaledToZero / ScaledUp (on the ServingRuntime) when a written Deployment crosses zero replicas;
every message goes through `events.redact` with the storage-config credentials. All decisions are made by `reconcile`, `status`,
`specs` and `runtimes`; this module never decides what the cluster should look like.

Keys: `InferenceService:ns/name`, `Predictor:ns/name` (one CR each) and `Runtimes:ns/` (every
runtime Deployment of the served namespace at once, because "in use" depends on all CRs).

Invariants:
* Workers start only after every informer has listed once, so a runtime is never judged unused
  because the CRs were not loaded yet (that would scale it to zero on the "first reconcile").
* A status is written only when it differs from what the object carries; watch events that
  change only `.status` do not enqueue the CR again (no write -> event -> write loop).
* A failed reconcile is retried with capped, jittered back-off per key; success resets it.
* A write that met a newer version of its CR (`KubeConflict`: 409, or a finalizer patch's failed
  `test`) is not a failure: the CR is read again (GET, into its informer) and reconciled again at
  once, up to `MAX_CONFLICT_RETRIES` times in a row; after that, back-off as for any failure.
* With a `finalizer` (Kubernetes mode), every CR the controller registers carries it before its
  first SetVModel, and loses it only after its vmodel was deleted: a CR deleted while the
  controller is down waits, marked, for the controller to unregister it. Local mode needs none:
  its resource store keeps tombstones, so a delete is never missed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from meshserve.common import modelid
from meshserve.common.backoff import backoff_delay
from meshserve.common.errors import AlreadyExists, Unavailable
from meshserve.controller import kube, metrics
from meshserve.controller import status as st
from meshserve.controller.events import (
    CONFIG_KEY_IGNORED,
    INVALID_CONFIG,
    INVALID_SPEC,
    SCALED_TO_ZERO,
    SCALED_UP,
    EventRecorder,
    EventType,
    InvolvedObject,
    LogEventRecorder,
    redact,
    secret_strings,
)
from meshserve.controller.finalizers import has_finalizer
from meshserve.controller.kube import JSON, KubeApi, KubeConflict, ResourceKind
from meshserve.controller.kube_writes import (
    KubeDeployments,
    hold_finalizer,
    release_finalizer,
    write_status,
)
from meshserve.controller.reconcile import (
    ActionKind,
    DeploymentAction,
    ObservedDeployment,
    PredictorOp,
    RuntimeRecord,
    plan_predictor,
    plan_runtimes,
)
from meshserve.controller.runtimes import (
    SELECTION_MESSAGES,
    Runtime,
    effective_runtimes,
    parse_runtime,
)
from meshserve.controller.scheduler_client import SchedulerPort
from meshserve.controller.serving_config import ServingConfig, next_config
from meshserve.controller.specs import PredictorCR, parse_inference_service, parse_predictor
from meshserve.controller.status_json import from_isvc_status, from_predictor_status
from meshserve.controller.storage_config import StorageConfig, parse_storage_secret
from meshserve.controller.watched import metadata, owner_kind, spec_changed
from meshserve.controller.watcher import Informer
from meshserve.controller.workqueue import Key, QueueShutdown, WorkQueue

log = logging.getLogger(__name__)

RUNTIMES = "Runtimes"
MAX_CONFLICT_RETRIES = 5
"""Conflicts in a row on one key retried at once from a fresh read (then: back-off)."""
WATCHED: tuple[ResourceKind, ...] = (
    kube.INFERENCE_SERVICE, kube.PREDICTOR, kube.SERVING_RUNTIME, kube.CLUSTER_SERVING_RUNTIME,
    kube.DEPLOYMENT, kube.CONFIG_MAP, kube.SECRET,
)


class RuntimeBackend(Protocol):
    """Who runs runtime pods: Deployments (Kubernetes) or local processes (local mode)."""

    def observed(self) -> dict[str, ObservedDeployment]:
        """What runs now, by Deployment name (`<inferenceServiceName>-<runtime>`)."""
        ...

    async def apply(self, action: DeploymentAction, *, namespace: str) -> None: ...


InformerRunner = Callable[[Mapping[str, Informer]], Awaitable[None]]
"""Feeds the informers (default: each runs its own list+watch against `api`)."""
ChangeFeed = Callable[[], AsyncIterator[set[str]]]
"""Yields sets of vmodel ids whose scheduler state changed (copies, routes, flips)."""


class Reconciler:
    """Informers + queue + workers for one served namespace (namespace-scope mode)."""

    def __init__(
        self, *, api: KubeApi, scheduler: SchedulerPort, namespace: str, config_map_name: str,
        scheduler_address: str, watch_timeout_seconds: int = 300, workers: int = 4,
        clock: Callable[[], float] = time.time, kinds: tuple[ResourceKind, ...] = WATCHED,
        runtime_backend: RuntimeBackend | None = None, informer_runner: InformerRunner | None = None,
        change_feed: ChangeFeed | None = None, resync_seconds: float | None = None,
        events: EventRecorder | None = None, finalizer: str | None = None,
    ) -> None:
        self.api = api
        self.scheduler = scheduler
        self.namespace = namespace
        self.config_map_name = config_map_name
        self.scheduler_address = scheduler_address
        self.config = ServingConfig()
        self._config_warnings: tuple[str, ...] = ()
        self.storage_secret_name = self.config.storage_secret_name
        self.storage = StorageConfig()
        self.records: dict[str, RuntimeRecord] = {}
        self.queue = WorkQueue()
        self.workers = workers
        self.clock = clock
        self.informers = {
            k.kind: Informer(api=api, kind=k, namespace=namespace, on_event=self.on_event,
                             watch_timeout_seconds=watch_timeout_seconds)
            for k in kinds
        }
        if runtime_backend is None:
            runtime_backend = KubeDeployments(api, self.informers[kube.DEPLOYMENT.kind])
        self.runtime_backend = runtime_backend
        self._informer_runner = informer_runner
        self._change_feed = change_feed
        self._resync_seconds = resync_seconds
        self.events: EventRecorder = events if events is not None else LogEventRecorder()
        self.ready = asyncio.Event()
        self._failures: dict[Key, int] = {}
        self._conflicts: dict[Key, int] = {}
        self.finalizer = finalizer
        """Put on every CR this controller registers (None: no finalizers, as in local mode)."""

    # --- events -> keys --------------------------------------------------------------------------

    def on_event(self, kind: ResourceKind, event_type: str, new: JSON, old: JSON | None) -> None:
        meta = metadata(new)
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        runtimes_key = Key(RUNTIMES, self.namespace, "")
        if kind in (kube.INFERENCE_SERVICE, kube.PREDICTOR):
            if event_type == "DELETED" or spec_changed(old, new):
                self.queue.add(Key(kind.kind, ns, name))
                self.queue.add(runtimes_key)
        elif kind in (kube.SERVING_RUNTIME, kube.CLUSTER_SERVING_RUNTIME):
            self.queue.add(runtimes_key)
            self._enqueue_all_predictors()    # runtime selection may change for every CR
        elif kind is kube.DEPLOYMENT:
            self.queue.add(runtimes_key)
        elif kind is kube.CONFIG_MAP and name == self.config_map_name:
            data = None if event_type == "DELETED" else (new.get("data") or {})
            update = next_config(self.config, data)
            if update.error:
                log.error("model-serving-config rejected, previous config stays: %s", update.error)
                self.event(InvolvedObject.of(kind, new), EventType.WARNING, INVALID_CONFIG,
                           f"invalid model-serving-config, keeping the previous configuration: {update.error}")
            if update.restart_needed:
                log.warning("storageSecretName changed; it takes effect after a controller restart")
            if update.warnings != self._config_warnings:  # once per change, not on every re-list
                self._config_warnings = update.warnings
                for warning in update.warnings:
                    log.warning("model-serving-config: %s", warning)
                    self.event(InvolvedObject.of(kind, new), EventType.WARNING, CONFIG_KEY_IGNORED,
                               f"model-serving-config: {warning}")
            self.config = update.config
            self.queue.add(runtimes_key)
            self._enqueue_all_predictors()
        elif kind is kube.SECRET and name == self.storage_secret_name:
            self.storage = parse_storage_secret(None if event_type == "DELETED" else new.get("data") or {})
            for key, why in self.storage.errors.items():
                log.warning("storage-config key %s ignored: %s", key, why)
            self.queue.add(runtimes_key)
        metrics.QUEUE_DEPTH.set(len(self.queue))

    def event(self, obj: InvolvedObject, type: EventType, reason: str, message: str) -> None:
        """Record an event; the message never carries a storage-config credential or URL userinfo."""
        secrets = [s for e in self.storage.entries.values() for s in secret_strings(e.credentials())]
        self.events.record(obj, type=type, reason=reason, message=redact(message, secrets))

    def _enqueue_all_predictors(self) -> None:
        for kind in (kube.INFERENCE_SERVICE, kube.PREDICTOR):
            for ns, name in list(self.informers[kind.kind].store):
                self.queue.add(Key(kind.kind, ns, name))

    def on_scheduler_change(self, ids: set[str]) -> None:
        """The scheduler's state of these models/vmodels changed: re-read the CRs that own them
        (what upstream gets from ModelMesh's registry watch). Unknown names are ignored."""
        for item in ids:
            kind, name = owner_kind(item)
            kinds = (kind,) if kind else (kube.INFERENCE_SERVICE.kind, kube.PREDICTOR.kind)
            for k in kinds:
                informer = self.informers.get(k)
                if informer is not None and informer.get(self.namespace, name) is not None:
                    self.queue.add(Key(k, self.namespace, name))

    # --- run -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run informers and workers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.events.run(), name="events")
            if self._informer_runner is not None:
                tg.create_task(self._informer_runner(self.informers), name="informers")
            else:
                for kind, informer in self.informers.items():
                    tg.create_task(informer.run(), name=f"informer-{kind}")
            await asyncio.gather(*(i.synced.wait() for i in self.informers.values()))
            log.info("all informers synced; starting %d workers", self.workers)
            for i in range(self.workers):
                tg.create_task(self._worker(), name=f"worker-{i}")
            if self._change_feed is not None:
                tg.create_task(self._follow_scheduler(self._change_feed), name="scheduler-changes")
            if self._resync_seconds:
                tg.create_task(self._resync(self._resync_seconds), name="resync")
            self.ready.set()

    async def _follow_scheduler(self, feed: ChangeFeed) -> None:
        async for ids in feed():
            self.on_scheduler_change(ids)

    async def _resync(self, period: float) -> None:
        """Re-read every CR now and then (a missed scheduler event cannot leave a status stale for long)."""
        while True:
            await asyncio.sleep(period)
            self._enqueue_all_predictors()

    def shutdown(self) -> None:
        self.queue.shutdown()

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueShutdown:
                return
            metrics.QUEUE_DEPTH.set(len(self.queue))
            try:
                try:
                    await self.reconcile(key)
                except KubeConflict as conflict:
                    if self._conflicts.get(key, 0) >= MAX_CONFLICT_RETRIES:
                        raise
                    self._conflicts[key] = self._conflicts.get(key, 0) + 1
                    log.info("reconcile of %s met a newer version (%s); reading it again", key, conflict.message)
                    await self.refresh(key)
                    self.queue.add(key)     # processing now: queued again when done
                    metrics.RECONCILES.labels(key.kind, "conflict").inc()
                    continue
                self._failures.pop(key, None)
                self._conflicts.pop(key, None)
                metrics.RECONCILES.labels(key.kind, "ok").inc()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._conflicts.pop(key, None)
                attempt = self._failures.get(key, 0)
                self._failures[key] = attempt + 1
                delay = backoff_delay(attempt=attempt, rand=random.random(), base=0.5, cap=30.0)
                metrics.RECONCILES.labels(key.kind, "error").inc()
                log.warning("reconcile of %s failed (%s: %s); retrying in %.2fs", key, type(err).__name__, err, delay)
                self.queue.add_after(key, delay)
            finally:
                self.queue.done(key)

    async def refresh(self, key: Key) -> None:
        """Read the object of `key` from the API server into its informer (after a conflict)."""
        informer = self.informers.get(key.kind)
        if informer is None:
            return
        fresh = await self.api.get(informer.kind, namespace=key.namespace, name=key.name)
        if fresh is not None:
            fresh.setdefault("kind", informer.kind.kind)
            fresh.setdefault("apiVersion", informer.kind.api_version)
            informer.observe(fresh)

    async def reconcile(self, key: Key) -> None:
        if key.kind == RUNTIMES:
            await self.reconcile_runtimes(key.namespace)
        elif key.kind in (kube.INFERENCE_SERVICE.kind, kube.PREDICTOR.kind):
            await self.reconcile_predictor(key)

    # --- desired state from the stores -----------------------------------------------------------

    def runtimes(self) -> dict[str, Runtime]:
        namespaced = [parse_runtime(o, cluster_scoped=False) for o in self.informers["ServingRuntime"].store.values()]
        cluster = [parse_runtime(o, cluster_scoped=True) for o in self.informers["ClusterServingRuntime"].store.values()]
        return effective_runtimes(namespaced=namespaced, cluster=cluster)

    def predictors(self) -> list[PredictorCR]:
        found: list[PredictorCR] = []
        for obj in self.informers["InferenceService"].store.values():
            cr = parse_inference_service(obj)
            if cr is not None:
                found.append(cr)
        found.extend(parse_predictor(o) for o in self.informers["Predictor"].store.values())
        return found

    def endpoints(self, namespace: str) -> tuple[str, str]:
        c = self.config
        host = f"{c.inference_service_name}.{namespace}"
        grpc_ep = f"grpc://{host}:{c.inference_service_port}"
        http_ep = f"http://{host}:{c.rest_proxy_port}" if c.rest_proxy_enabled else ""
        return grpc_ep, http_ep

    # --- one CR ----------------------------------------------------------------------------------

    async def reconcile_predictor(self, key: Key) -> None:
        is_isvc = key.kind == kube.INFERENCE_SERVICE.kind
        kind = kube.INFERENCE_SERVICE if is_isvc else kube.PREDICTOR
        obj = self.informers[kind.kind].get(key.namespace, key.name)
        cr: PredictorCR | None = None
        owner = modelid.SOURCE_ISVC if is_isvc else modelid.SOURCE_PREDICTOR
        if obj is not None:
            cr = parse_inference_service(obj) if is_isvc else parse_predictor(obj)
            if cr is None:
                # an InferenceService not in ModelMesh mode: not ours, unless it was (our finalizer)
                if self.finalizer and has_finalizer(obj, self.finalizer):
                    await self.scheduler.delete_vmodel(vmodel_id=key.name, owner=owner)
                    await release_finalizer(self.api, kind=kind, obj=obj, name=self.finalizer)
                return
        plan = plan_predictor(cr, runtimes=self.runtimes(), config=self.config)
        if plan.op is PredictorOp.DELETE_VMODEL or cr is None or obj is None:
            await self.scheduler.delete_vmodel(vmodel_id=key.name, owner=owner)
            log.info("deleted vmodel %s (owner %s)", key.name, owner)
            if obj is not None and self.finalizer:
                await release_finalizer(self.api, kind=kind, obj=obj, name=self.finalizer)
            return
        raw_status = obj.get("status")
        previous = from_isvc_status(raw_status) if is_isvc else from_predictor_status(raw_status)
        now = datetime.now(UTC)
        grpc_ep, http_ep = self.endpoints(key.namespace)
        reachable = True
        if plan.op is PredictorOp.READ_STATUS:
            try:
                view = await self.scheduler.get_vmodel_status(vmodel_id=cr.vmodel_id, owner=cr.source)
            except Unavailable:
                view, reachable = None, False
            self.event(InvolvedObject.of(kind, obj), EventType.WARNING, INVALID_SPEC, cr.error)
            new = st.invalid_spec_status(previous, message=cr.error, model_id=cr.model_id, vmodel=view, now=now,
                                         grpc_endpoint=grpc_ep, http_endpoint=http_ep)
        elif plan.op is PredictorOp.NO_RUNTIME and plan.failure is not None:
            new = st.selection_failure_status(
                previous, reason=st.FailureReason(plan.failure.value), message=SELECTION_MESSAGES[plan.failure],
                model_id=cr.model_id, now=now, grpc_endpoint=grpc_ep, http_endpoint=http_ep,
            )
        else:
            assert cr.spec is not None
            if self.finalizer:   # before the first registration: from now on a delete waits for us
                obj = await hold_finalizer(self.api, self.informers[kind.kind], kind=kind, obj=obj, name=self.finalizer)
            try:
                vm = await self.scheduler.set_vmodel(
                    vmodel_id=cr.vmodel_id, owner=cr.source, model_id=cr.model_id, spec=cr.spec,
                    load_now=st.load_now(previous, deleting=False),
                )
                new = st.status_from_vmodel(previous, vm, now=now, grpc_endpoint=grpc_ep, http_endpoint=http_ep)
            except Unavailable:
                new, reachable = st.scheduler_unreachable_status(previous, model_id=cr.model_id, now=now), False
            except AlreadyExists:
                new = st.other_owner_status(previous, now=now)
        await write_status(self.api, self.informers[kind.kind], kind=kind, obj=obj, cr=cr, previous=previous, new=new, now=now)
        delay = st.requeue_after(new, scheduler_reachable=reachable)
        if delay is not None:
            self.queue.add_after(key, delay)

    # --- runtime Deployments ---------------------------------------------------------------------

    async def reconcile_runtimes(self, namespace: str) -> None:
        observed = self.runtime_backend.observed()
        plan = plan_runtimes(
            runtimes=self.runtimes(), predictors=self.predictors(), observed=observed, records=self.records,
            config=self.config, namespace=namespace, storage=self.storage, scheduler_address=self.scheduler_address,
            now=self.clock(),
        )
        self.records = dict(plan.records)
        for name, errors in plan.invalid.items():
            log.warning("ServingRuntime %s is invalid: %s", name, "; ".join(errors))
        for action in plan.actions:
            await self._apply(action, namespace=namespace)
            self._scale_event(action, observed.get(action.name), namespace=namespace)
        if plan.requeue_after is not None:
            self.queue.add_after(Key(RUNTIMES, namespace, ""), plan.requeue_after)

    def _scale_event(self, action: DeploymentAction, before: ObservedDeployment | None, *, namespace: str) -> None:
        """ScaledToZero / ScaledUp on the ServingRuntime when a written Deployment crossed zero."""
        if action.kind is ActionKind.DELETE or before is None:
            return
        if before.replicas > 0 and action.replicas == 0:
            reason, message = SCALED_TO_ZERO, f"runtime Deployment {action.name} scaled to 0 replicas ({action.reason})"
        elif before.replicas == 0 and action.replicas > 0:
            reason, message = SCALED_UP, (
                f"runtime Deployment {action.name} scaled up to {action.replicas} replicas ({action.reason})"
            )
        else:
            return
        obj: JSON | None = None
        kind = kube.SERVING_RUNTIME
        for candidate in (kube.SERVING_RUNTIME, kube.CLUSTER_SERVING_RUNTIME):
            informer = self.informers.get(candidate.kind)
            found = informer.get(namespace, action.runtime) if informer is not None else None
            if found is not None:
                obj, kind = found, candidate
                break
        self.event(InvolvedObject.of(kind, obj, namespace=namespace, name=action.runtime), EventType.NORMAL, reason, message)

    async def _apply(self, action: DeploymentAction, *, namespace: str) -> None:
        log.info("deployment %s: %s replicas=%d (%s)", action.name, action.kind.value, action.replicas, action.reason)
        await self.runtime_backend.apply(action, namespace=namespace)
