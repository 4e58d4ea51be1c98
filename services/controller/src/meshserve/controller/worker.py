"""The reconcile loop against Kubernetes: informers -> coalescing queue -> pure planners -> writes.

Owns: which keys are enqueued for which watch event, the per-namespace runtime timers
(`RuntimeRecord`s), the live `ServingConfig`/`StorageConfig`, and the I/O that carries out a
plan (scheduler calls here; status merge-patches through the `/status` subresource and
Deployment create/patch/scale/delete through apps/v1 in `kube_writes`), and which events it
reports through its `EventRecorder`: InvalidConfig (on the ConfigMap) when a model-serving-config update is rejected,
InvalidSpec (on the CR) on every reconcile of an invalid spec (the recorder de-duplicates), and
ScaledToZero / ScaledUp (on the ServingRuntime) when a written Deployment crosses zero replicas,
InvalidAutoscaling (on the runtime) while its autoscaling annotations cannot be followed;
every message goes through `events.redact` with the storage-config credentials. All decisions are made by `reconcile`, `status`,
`specs` and `runtimes`; this module never decides what the cluster should look like.

Keys: `InferenceService:ns/name`, `Predictor:ns/name` (one CR each) and `Runtimes:ns/` (every
runtime Deployment of namespace ns at once, because "in use" depends on all its CRs, and its
router Deployment, Service and PodDisruptionBudget when the controller runs routers, and in Kubernetes mode the
runtimes' HorizontalPodAutoscalers).

Model-pressure autoscaling (Kubernetes mode, with `pressure`): `kube_autoscale.KubeAutoscaler`
runs beside the workers once the informers have listed; the runtimes are planned with
`pressure=True` (their replicas stay what it set), and a namespace's runtime reconcile and
its replica writes take one lock (`runtimes_lock`).

HPAs (Kubernetes mode, upstream's `controllers/hpa`): after the Deployment actions, each
eligible runtime's HPA (named like its Deployment) is read with a GET (there is no HPA
informer: the controller is their only writer besides a user) and created (the runtime its
owner) or replaced from its resourceVersion when `hpa.hpa_differs`; an HPA the runtime no
longer asks for, or whose Deployment is deleted, is deleted when it carries the runtime's
`serving.kserve.io/inferenceservice` label (an HPA someone else made is left alone).

Namespaces (`scope`): in namespace scope the informers watch the controller's namespace only.
In cluster scope they watch every namespace (the model-serving-config ConfigMap stays the
controller namespace's), plus Namespaces; a namespace is served while it is the controller's
or carries `modelmesh-enabled: "true"`. Objects of other namespaces are ignored, except:
* when a namespace stops being served (label removed or set to anything else), its runtime
  Deployments and its router are deleted (upstream deletes them too); the registrations of its
  CRs stay with the scheduler and their statuses stay as they were, so labelling it again
  serves the same models at once;
* a CR there that is being deleted and carries our finalizer is still unregistered and
  released, so a delete never hangs on a namespace we stopped serving.

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
import copy
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from meshserve.common import modelid
from meshserve.common.backoff import backoff_delay
from meshserve.common.errors import AlreadyExists, InvalidArgument, Unavailable
from meshserve.controller import hpa as autoscaling
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
from meshserve.controller.internal_tls import InternalTls
from meshserve.controller.kinds import HORIZONTAL_POD_AUTOSCALER
from meshserve.controller.kube import JSON, KubeApi, KubeConflict, ResourceKind
from meshserve.controller.kube_autoscale import KubeAutoscaler, PressureOptions, SchedulerAdmin
from meshserve.controller.kube_writes import (
    KubeDeployments,
    apply_owned,
    delete_owned,
    hold_finalizer,
    release_finalizer,
    write_status,
)
from meshserve.controller.reconcile import (
    ActionKind,
    DeploymentAction,
    HpaPlan,
    ObservedDeployment,
    PredictorOp,
    RuntimeRecord,
    plan_predictor,
    plan_runtimes,
)
from meshserve.controller.router_deployment import (
    COMPONENT,
    COMPONENT_LABEL,
    MANAGED_BY_LABEL,
    POD_DISRUPTION_BUDGET,
    ROUTER_MANAGED_BY,
    build_router_deployment,
    build_router_pdb,
    build_router_service,
)
from meshserve.controller.runtimes import (
    SELECTION_MESSAGES,
    Runtime,
    effective_runtimes,
    parse_runtime,
)
from meshserve.controller.scheduler_client import SchedulerPort
from meshserve.controller.scope import Scope, namespace_enabled, qualified_address, scheduler_model
from meshserve.controller.serving_config import ServingConfig, next_config
from meshserve.controller.specs import PredictorCR, parse_inference_service, parse_predictor
from meshserve.controller.status_json import from_isvc_status, from_predictor_status
from meshserve.controller.storage_config import StorageConfig, parse_storage_secret
from meshserve.controller.watched import metadata, owner_kind, spec_changed
from meshserve.controller.watcher import Informer
from meshserve.controller.workqueue import Key, QueueShutdown, WorkQueue

log = logging.getLogger(__name__)

RUNTIMES = "Runtimes"
INVALID_AUTOSCALING = "InvalidAutoscaling"
"""Event reason (Warning, on the runtime): an autoscaling annotation the controller cannot follow."""
MAX_CONFLICT_RETRIES = 5
"""Conflicts in a row on one key retried at once from a fresh read (then: back-off)."""
WATCHED: tuple[ResourceKind, ...] = (
    kube.INFERENCE_SERVICE, kube.PREDICTOR, kube.SERVING_RUNTIME, kube.CLUSTER_SERVING_RUNTIME,
    kube.DEPLOYMENT, kube.CONFIG_MAP, kube.SECRET,
)


class RuntimeBackend(Protocol):
    """Who runs runtime pods: Deployments (Kubernetes) or local processes (local mode)."""

    def observed(self) -> dict[str, ObservedDeployment]:
        """What runs now, by Deployment name (`<inferenceServiceName>-<runtime>`); in cluster
        scope (Kubernetes only) called as `observed(namespace=ns)`."""
        ...

    async def apply(self, action: DeploymentAction, *, namespace: str) -> None: ...


InformerRunner = Callable[[Mapping[str, Informer]], Awaitable[None]]
"""Feeds the informers (default: each runs its own list+watch against `api`)."""
ChangeFeed = Callable[[], AsyncIterator[set[str]]]
"""Yields sets of vmodel ids whose scheduler state changed (copies, routes, flips)."""


@dataclass(frozen=True)
class RouterOptions:
    """Run a router Deployment and its Service in each served namespace (Kubernetes mode)."""

    image: str
    replicas: int = 2


class Reconciler:
    """Informers + queue + workers for the served namespaces (see the module's docstring)."""

    def __init__(
        self, *, api: KubeApi, scheduler: SchedulerPort, namespace: str, config_map_name: str,
        scheduler_address: str, watch_timeout_seconds: int = 300, workers: int = 4,
        clock: Callable[[], float] = time.time, kinds: tuple[ResourceKind, ...] = WATCHED,
        runtime_backend: RuntimeBackend | None = None, informer_runner: InformerRunner | None = None,
        change_feed: ChangeFeed | None = None, resync_seconds: float | None = None,
        events: EventRecorder | None = None, finalizer: str | None = None,
        cluster_scope: bool = False, router: RouterOptions | None = None, hpa: bool | None = None,
        pressure: PressureOptions | None = None, pressure_admin: SchedulerAdmin | None = None,
        internal_tls: InternalTls | None = None,
    ) -> None:
        self.api = api
        self.scheduler = scheduler
        self.namespace = namespace
        self.scope = Scope(home=namespace, cluster=cluster_scope)
        self.router = router
        self.config_map_name = config_map_name
        self.scheduler_address = scheduler_address
        self.config = ServingConfig()
        self._config_warnings: tuple[str, ...] = ()
        self.storage_secret_name = self.config.storage_secret_name
        self.storages: dict[str, StorageConfig] = {}
        """namespace -> its storage-config Secret (parsed)."""
        self.records: dict[str, dict[str, RuntimeRecord]] = {}
        """namespace -> runtime -> scale-to-zero record."""
        self.queue = WorkQueue()
        self.workers = workers
        self.clock = clock
        kinds = tuple(kinds)
        if cluster_scope and kube.NAMESPACE not in kinds:
            kinds += (kube.NAMESPACE,)
        if router is not None:
            kinds += tuple(k for k in (kube.SERVICE, POD_DISRUPTION_BUDGET) if k not in kinds)
        self.informers = {
            k.kind: Informer(api=api, kind=k, namespace=self._watched_namespace(k), on_event=self.on_event,
                             watch_timeout_seconds=watch_timeout_seconds,
                             # cluster scope: never every Secret of the cluster, only the storage-config ones
                             field_selector=f"metadata.name={self.storage_secret_name}"
                             if cluster_scope and k is kube.SECRET else "")
            for k in kinds
        }
        self.hpa = runtime_backend is None if hpa is None else hpa
        """Manage the runtimes' HorizontalPodAutoscalers (default: with the Kubernetes Deployments backend)."""
        self.autoscaler: KubeAutoscaler | None = None
        """The model-pressure autoscaler of the runtime Deployments (Kubernetes mode, with `pressure`)."""
        if pressure is not None:
            if runtime_backend is not None or pressure_admin is None:
                raise ValueError("pressure autoscaling needs the Kubernetes Deployments backend and pressure_admin")
            self.autoscaler = KubeAutoscaler(api=api, admin=pressure_admin, view=self, options=pressure)
        self._runtime_locks: dict[str, asyncio.Lock] = {}
        self.internal_tls = internal_tls
        """The internal TLS Secret mounted into runtime pods (puller) and routers (None: off)."""
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

    # --- namespaces ------------------------------------------------------------------------------

    def _watched_namespace(self, kind: ResourceKind) -> str:
        """Cluster scope watches every namespace ("") except for the ConfigMap (the controller's own)."""
        if self.scope.cluster and kind is not kube.CONFIG_MAP:
            return ""
        return self.namespace

    def served(self, namespace: str) -> bool:
        informer = self.informers.get(kube.NAMESPACE.kind)
        return self.scope.served(namespace, informer.get("", namespace) if informer is not None else None)

    def served_namespaces(self) -> list[str]:
        found = {self.namespace}
        informer = self.informers.get(kube.NAMESPACE.kind)
        if self.scope.cluster and informer is not None:
            found |= {name for (_, name), obj in informer.store.items() if namespace_enabled(obj)}
        return sorted(found)

    @property
    def storage(self) -> StorageConfig:
        """The controller namespace's storage-config."""
        return self.storages.get(self.namespace, StorageConfig())

    def _ours(self, obj: JSON) -> bool:
        """A CR being deleted that still carries our finalizer (handled in any namespace)."""
        return bool(self.finalizer) and bool(metadata(obj).get("deletionTimestamp")) and has_finalizer(obj, self.finalizer or "")

    def _managed(self, obj: JSON) -> bool:
        labels = metadata(obj).get("labels") or {}
        return isinstance(labels, Mapping) and labels.get("app.kubernetes.io/managed-by") in (
            "modelmesh-controller", ROUTER_MANAGED_BY)

    # --- events -> keys --------------------------------------------------------------------------

    def on_event(self, kind: ResourceKind, event_type: str, new: JSON, old: JSON | None) -> None:
        meta = metadata(new)
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        runtimes_key = Key(RUNTIMES, ns or self.namespace, "")
        if kind in (kube.INFERENCE_SERVICE, kube.PREDICTOR):
            if not self.served(ns) and not self._ours(new):
                pass
            elif event_type == "DELETED" or spec_changed(old, new):
                self.queue.add(Key(kind.kind, ns, name))
                self.queue.add(runtimes_key)
        elif kind is kube.SERVING_RUNTIME:
            if self.served(ns):
                self.queue.add(runtimes_key)
                self._enqueue_all_predictors(ns)    # runtime selection may change for every CR
        elif kind is kube.CLUSTER_SERVING_RUNTIME:
            for served in self.served_namespaces():
                self.queue.add(Key(RUNTIMES, served, ""))
            self._enqueue_all_predictors()
        elif kind in (kube.DEPLOYMENT, kube.SERVICE, POD_DISRUPTION_BUDGET):
            if self.served(ns) or self._managed(new):
                self.queue.add(runtimes_key)
        elif kind is kube.NAMESPACE:
            before = self.scope.served(name, old) if old is not None else None
            after = self.scope.served(name, None if event_type == "DELETED" else new)
            if before != after:
                log.info("namespace %s is %s", name, "served" if after else "no longer served")
                self.queue.add(Key(RUNTIMES, name, ""))
                self._enqueue_all_predictors(name)
        elif kind is kube.CONFIG_MAP and name == self.config_map_name and ns == self.namespace:
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
            for served in self.served_namespaces():
                self.queue.add(Key(RUNTIMES, served, ""))
            self._enqueue_all_predictors()
        elif kind is kube.SECRET and name == self.storage_secret_name:
            storage = parse_storage_secret(None if event_type == "DELETED" else new.get("data") or {})
            self.storages[ns] = storage
            if self.served(ns):
                for key, why in storage.errors.items():
                    log.warning("storage-config key %s of namespace %s ignored: %s", key, ns, why)
                self.queue.add(runtimes_key)
        metrics.QUEUE_DEPTH.set(len(self.queue))

    def event(self, obj: InvolvedObject, type: EventType, reason: str, message: str) -> None:
        """Record an event; the message never carries a storage-config credential or URL userinfo."""
        secrets = [s for st in self.storages.values() for e in st.entries.values() for s in secret_strings(e.credentials())]
        self.events.record(obj, type=type, reason=reason, message=redact(message, secrets))

    def _enqueue_all_predictors(self, namespace: str | None = None) -> None:
        """Every CR (of `namespace`, or of every served namespace), and ours being deleted anywhere."""
        for kind in (kube.INFERENCE_SERVICE, kube.PREDICTOR):
            for (ns, name), obj in list(self.informers[kind.kind].store.items()):
                if (namespace is None or ns == namespace) and (self.served(ns) or self._ours(obj)):
                    self.queue.add(Key(kind.kind, ns, name))

    def on_scheduler_change(self, ids: set[str]) -> None:
        """The scheduler's state of these models/vmodels changed: re-read the CRs that own them
        (what upstream gets from ModelMesh's registry watch). Unknown names are ignored."""
        for item in ids:
            ns, unscoped = self.scope.split(item)
            if not ns:
                continue
            kind, name = owner_kind(unscoped)
            kinds = (kind,) if kind else (kube.INFERENCE_SERVICE.kind, kube.PREDICTOR.kind)
            for k in kinds:
                informer = self.informers.get(k)
                if informer is not None and informer.get(ns, name) is not None:
                    self.queue.add(Key(k, ns, name))

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
            if self.autoscaler is not None:
                tg.create_task(self.autoscaler.run(), name="pressure-autoscaler")
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

    def runtimes(self, namespace: str | None = None) -> dict[str, Runtime]:
        """The runtimes of `namespace` (default: the controller's): its ServingRuntimes over
        the ClusterServingRuntimes of the same names."""
        ns = self.namespace if namespace is None else namespace
        namespaced = [parse_runtime(o, cluster_scoped=False)
                      for (o_ns, _), o in self.informers["ServingRuntime"].store.items() if o_ns == ns]
        cluster = [parse_runtime(o, cluster_scoped=True) for o in self.informers["ClusterServingRuntime"].store.values()]
        return effective_runtimes(namespaced=namespaced, cluster=cluster)

    def predictors(self, namespace: str | None = None) -> list[PredictorCR]:
        ns = self.namespace if namespace is None else namespace
        found: list[PredictorCR] = []
        for (o_ns, _), obj in self.informers["InferenceService"].store.items():
            cr = parse_inference_service(obj) if o_ns == ns else None
            if cr is not None:
                found.append(cr)
        found.extend(parse_predictor(o) for (o_ns, _), o in self.informers["Predictor"].store.items() if o_ns == ns)
        return found

    def pod_scheduler_address(self, namespace: str) -> str:
        """The scheduler's address as pods of `namespace` dial it."""
        return qualified_address(self.scheduler_address, service_namespace=self.namespace, client_namespace=namespace)

    def endpoints(self, namespace: str) -> tuple[str, str]:
        c = self.config
        return c.grpc_endpoint(namespace), c.http_endpoint(namespace)

    # --- one CR ----------------------------------------------------------------------------------

    async def reconcile_predictor(self, key: Key) -> None:
        is_isvc = key.kind == kube.INFERENCE_SERVICE.kind
        kind = kube.INFERENCE_SERVICE if is_isvc else kube.PREDICTOR
        obj = self.informers[kind.kind].get(key.namespace, key.name)
        cr: PredictorCR | None = None
        owner = modelid.SOURCE_ISVC if is_isvc else modelid.SOURCE_PREDICTOR
        vmodel_id = self.scope.vmodel_id(key.namespace, key.name)
        if obj is not None:
            cr = parse_inference_service(obj) if is_isvc else parse_predictor(obj)
            # an InferenceService not in ModelMesh mode is not ours, unless it was (our
            # finalizer); a namespace no longer served: only a delete we hold is carried out
            if cr is None or (not self.served(key.namespace) and not (cr.deleting and self._ours(obj))):
                if self.finalizer and has_finalizer(obj, self.finalizer) and (cr is None or cr.deleting):
                    await self.scheduler.delete_vmodel(vmodel_id=vmodel_id, owner=owner)
                    await release_finalizer(self.api, kind=kind, obj=obj, name=self.finalizer)
                return
        runtimes = self.runtimes(key.namespace)
        plan = plan_predictor(cr, runtimes=runtimes, config=self.config)
        if plan.op is PredictorOp.DELETE_VMODEL or cr is None or obj is None:
            await self.scheduler.delete_vmodel(vmodel_id=vmodel_id, owner=owner)
            log.info("deleted vmodel %s (owner %s)", vmodel_id, owner)
            if obj is not None and self.finalizer:
                await release_finalizer(self.api, kind=kind, obj=obj, name=self.finalizer)
            return
        target = scheduler_model(cr, scope=self.scope, supporting=plan.runtimes)
        raw_status = obj.get("status")
        previous = from_isvc_status(raw_status) if is_isvc else from_predictor_status(raw_status)
        now = datetime.now(UTC)
        grpc_ep, http_ep = self.endpoints(key.namespace)
        reachable = True
        if plan.op is PredictorOp.READ_STATUS:
            try:
                view = await self.scheduler.get_vmodel_status(vmodel_id=target.vmodel_id, owner=cr.source)
            except Unavailable:
                view, reachable = None, False
            self.event(InvolvedObject.of(kind, obj), EventType.WARNING, INVALID_SPEC, cr.error)
            new = st.invalid_spec_status(previous, message=cr.error, model_id=target.model_id, vmodel=view, now=now,
                                         grpc_endpoint=grpc_ep, http_endpoint=http_ep)
        elif plan.op is PredictorOp.NO_RUNTIME and plan.failure is not None:
            new = st.selection_failure_status(
                previous, reason=st.FailureReason(plan.failure.value), message=SELECTION_MESSAGES[plan.failure],
                model_id=target.model_id, now=now, grpc_endpoint=grpc_ep, http_endpoint=http_ep,
            )
        else:
            assert target.spec is not None
            if self.finalizer:   # before the first registration: from now on a delete waits for us
                obj = await hold_finalizer(self.api, self.informers[kind.kind], kind=kind, obj=obj, name=self.finalizer)
            try:
                vm = await self.scheduler.set_vmodel(
                    vmodel_id=target.vmodel_id, owner=cr.source, model_id=target.model_id, spec=target.spec,
                    load_now=st.load_now(previous, deleting=False),
                )
                new = st.status_from_vmodel(previous, vm, now=now, grpc_endpoint=grpc_ep, http_endpoint=http_ep)
            except Unavailable:
                new, reachable = st.scheduler_unreachable_status(previous, model_id=target.model_id, now=now), False
            except AlreadyExists:
                new = st.other_owner_status(previous, now=now)
            except InvalidArgument as err:   # e.g. a namespaced id over the scheduler's 253 characters
                self.event(InvolvedObject.of(kind, obj), EventType.WARNING, INVALID_SPEC, err.message)
                new = st.invalid_spec_status(previous, message=err.message, model_id=target.model_id, vmodel=None,
                                             now=now, grpc_endpoint=grpc_ep, http_endpoint=http_ep)
        await write_status(self.api, self.informers[kind.kind], kind=kind, obj=obj, cr=cr, previous=previous, new=new, now=now)
        delay = st.requeue_after(new, scheduler_reachable=reachable)
        if delay is not None:
            self.queue.add_after(key, delay)

    # --- runtime Deployments ---------------------------------------------------------------------

    def runtimes_lock(self, namespace: str) -> asyncio.Lock:
        """Held while the runtime Deployments of `namespace` are planned and written (the
        autoscaler's replica writes take it too)."""
        return self._runtime_locks.setdefault(namespace, asyncio.Lock())

    async def reconcile_runtimes(self, namespace: str) -> None:
        """The runtime Deployments (and router) of `namespace`; all deleted when it is not served."""
        async with self.runtimes_lock(namespace):
            await self._reconcile_runtimes(namespace)

    async def _reconcile_runtimes(self, namespace: str) -> None:
        served = self.served(namespace)
        if self.scope.cluster:
            observed = self.runtime_backend.observed(namespace=namespace)  # type: ignore[call-arg]
        else:
            observed = self.runtime_backend.observed()
        runtimes = self.runtimes(namespace) if served else {}
        plan = plan_runtimes(
            runtimes=runtimes, predictors=self.predictors(namespace) if served else [],
            observed=observed, records=self.records.get(namespace, {}),
            config=self.config, namespace=namespace, storage=self.storages.get(namespace, StorageConfig()),
            scheduler_address=self.pod_scheduler_address(namespace), now=self.clock(),
            runtime_prefix=self.scope.prefix(namespace),
            hpa=self.hpa, runtime_meta=self._runtime_meta(namespace, runtimes) if self.hpa else None,
            pressure=self.autoscaler is not None, internal_tls=self.internal_tls,
        )
        if served:
            self.records[namespace] = dict(plan.records)
        else:
            self.records.pop(namespace, None)
        for name, errors in plan.invalid.items():
            log.warning("ServingRuntime %s in %s is invalid: %s", name, namespace, "; ".join(errors))
        for action in plan.actions:
            await self._apply(action, namespace=namespace)
            self._scale_event(action, observed.get(action.name), namespace=namespace)
        if self.hpa:
            await self.reconcile_hpas(namespace, plan.hpas, deleted=[a for a in plan.actions if a.kind is ActionKind.DELETE])
        await self.reconcile_router(namespace, served=served)
        if plan.requeue_after is not None:
            self.queue.add_after(Key(RUNTIMES, namespace, ""), plan.requeue_after)

    async def reconcile_router(self, namespace: str, *, served: bool) -> None:
        """The router Deployment, Service and PodDisruptionBudget of `namespace` (named
        `inferenceServiceName`) as the config says, the budget owned by the Deployment (made
        once the Deployment has a uid); the controller's other routers there (a renamed
        service) deleted."""
        if self.router is None:
            return
        wanted: dict[str, JSON] = {}
        if served:
            wanted[kube.DEPLOYMENT.kind] = build_router_deployment(
                self.config, namespace=namespace, image=self.router.image, replicas=self.router.replicas,
                scheduler_address=self.pod_scheduler_address(namespace), cluster_scope=self.scope.cluster,
                internal_tls=self.internal_tls,
            )
            wanted[kube.SERVICE.kind] = build_router_service(self.config, namespace=namespace)
        for kind in (kube.DEPLOYMENT, kube.SERVICE, POD_DISRUPTION_BUDGET):
            informer = self.informers[kind.kind]
            if kind is POD_DISRUPTION_BUDGET and served:
                owner = self.informers[kube.DEPLOYMENT.kind].get(namespace, self.config.inference_service_name)
                uid = str(metadata(owner).get("uid") or "")
                if uid:
                    wanted[kind.kind] = build_router_pdb(self.config, namespace=namespace, owner_uid=uid)
            manifest = wanted.get(kind.kind)
            keep = str(manifest["metadata"]["name"]) if manifest is not None else None
            for (ns, name), obj in list(informer.store.items()):
                labels = metadata(obj).get("labels") or {}
                if (ns == namespace and name != keep and labels.get(COMPONENT_LABEL) == COMPONENT
                        and labels.get(MANAGED_BY_LABEL) == ROUTER_MANAGED_BY):
                    log.info("router %s %s/%s: deleted", kind.kind, ns, name)
                    await delete_owned(self.api, informer, kind=kind, namespace=ns, name=name)
            if manifest is not None:
                done = await apply_owned(self.api, informer, kind=kind, manifest=manifest)
                if done:
                    log.info("router %s %s/%s: %s", kind.kind, namespace, keep, done)

    def _runtime_object(self, namespace: str, runtime: str) -> tuple[ResourceKind, JSON | None]:
        """The ServingRuntime of `namespace` named `runtime`, else the ClusterServingRuntime."""
        for candidate in (kube.SERVING_RUNTIME, kube.CLUSTER_SERVING_RUNTIME):
            informer = self.informers.get(candidate.kind)
            found = informer.get(namespace, runtime) if informer is not None else None
            if found is not None:
                return candidate, found
        return kube.SERVING_RUNTIME, None

    def _runtime_meta(self, namespace: str, runtimes: Mapping[str, Runtime]) -> dict[str, tuple[str, Mapping[str, str]]]:
        """runtime name -> (uid, labels) of the object it was read from (the owner of its HPA)."""
        found: dict[str, tuple[str, Mapping[str, str]]] = {}
        for name, rt in runtimes.items():
            informer = self.informers.get(rt.kind)
            obj = informer.get("" if rt.cluster_scoped else namespace, name) if informer is not None else None
            meta = metadata(obj) if obj is not None else {}
            labels = meta.get("labels") or {}
            found[name] = (str(meta.get("uid") or ""), labels if isinstance(labels, Mapping) else {})
        return found

    async def reconcile_hpas(self, namespace: str, hpas: tuple[HpaPlan, ...], *, deleted: list[DeploymentAction]) -> None:
        """Create, replace or delete the runtimes' HPAs as planned; delete those of deleted Deployments."""
        kind = HORIZONTAL_POD_AUTOSCALER
        for p in hpas:
            if p.error:
                log.warning("runtime %s in %s: autoscaling not applied: %s", p.runtime, namespace, p.error)
                rt_kind, obj = self._runtime_object(namespace, p.runtime)
                self.event(InvolvedObject.of(rt_kind, obj, namespace=namespace, name=p.runtime), EventType.WARNING,
                           INVALID_AUTOSCALING, f"autoscaling of runtime {p.runtime} not applied: {p.error}")
                continue
            existing = await self.api.get(kind, namespace=namespace, name=p.name)
            if p.wanted and p.desired is not None:
                if existing is None:
                    await self.api.create(kind, namespace=namespace, body=p.desired)
                    log.info("HPA %s/%s: created", namespace, p.name)
                elif autoscaling.hpa_differs(p.desired, existing):
                    body = copy.deepcopy(dict(p.desired))
                    body["metadata"]["resourceVersion"] = str(metadata(existing).get("resourceVersion") or "")
                    await self.api.replace(kind, namespace=namespace, name=p.name, body=body)
                    log.info("HPA %s/%s: replaced", namespace, p.name)
            elif existing is not None:
                await self._delete_hpa(namespace, p.runtime, existing)
        for action in deleted:
            existing = await self.api.get(kind, namespace=namespace, name=action.name)
            if existing is not None:
                await self._delete_hpa(namespace, action.runtime, existing)

    async def _delete_hpa(self, namespace: str, runtime: str, existing: JSON) -> None:
        meta = metadata(existing)
        labels = meta.get("labels") or {}
        if not isinstance(labels, Mapping) or labels.get(autoscaling.INFERENCE_SERVICE_LABEL) != runtime:
            return   # not one build_hpa made for this runtime
        await self.api.delete(HORIZONTAL_POD_AUTOSCALER, namespace=namespace, name=str(meta.get("name") or ""))
        log.info("HPA %s/%s: deleted", namespace, meta.get("name"))

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
        kind, obj = self._runtime_object(namespace, action.runtime)
        self.event(InvolvedObject.of(kind, obj, namespace=namespace, name=action.runtime), EventType.NORMAL, reason, message)

    async def _apply(self, action: DeploymentAction, *, namespace: str) -> None:
        log.info("deployment %s: %s replicas=%d (%s)", action.name, action.kind.value, action.replicas, action.reason)
        await self.runtime_backend.apply(action, namespace=namespace)
