"""The reconciler's writes to the Kubernetes API: runtime Deployments, CR status and finalizers.

`KubeDeployments` is the Kubernetes `RuntimeBackend` (see `worker`): it creates, patches, scales
and deletes apps/v1 Deployments, and the Deployment informer is its observed state.
`write_status` merge-patches a CR's status through the `/status` subresource. Neither decides
anything: the actions come from `reconcile`, the status from `status` and `status_json`.

Invariants:
* Every object a write returns goes into its informer (`Informer.observe`), so the next reconcile
  sees the write without waiting for its watch event; a deleted Deployment leaves the store at once.
* A status is written only when it differs from what the CR carries (no write -> watch event ->
  write loop); a CR deleted meanwhile (404) is not an error, its DELETED event enqueues it again.
* Against the Kubernetes API a status write carries the resourceVersion of the CR it was
  computed from, so a CR changed meanwhile answers 409 and `KubeConflict` reaches the worker,
  which reads the CR again and reconciles it at once (a status is never computed from one
  version and written over another).
* Creating a Deployment that already exists (409) patches it instead.
* Finalizers are added and removed with the JSON patches of `finalizers` (safe against other
  writers); a CR gone meanwhile (404) is not an error. A patch whose `test` failed (422) because
  the CR changed since our view raises `KubeConflict` too (checked by reading the CR: an
  unchanged resourceVersion means the 422 was something else, and it is raised as it is). The object a removal returns is not put
  into the informer: the API server may have deleted it with that write (its DELETED event
  follows).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from datetime import datetime

from meshserve.controller import finalizers, kube
from meshserve.controller.kube import JSON, KubeApi, KubeConflict, KubeError, ResourceKind
from meshserve.controller.reconcile import ActionKind, DeploymentAction, ObservedDeployment
from meshserve.controller.router_deployment import SPEC_HASH_ANNOTATION, is_headless
from meshserve.controller.specs import PredictorCR
from meshserve.controller.status import PredictorStatus
from meshserve.controller.status_json import to_isvc_status, to_predictor_status
from meshserve.controller.watched import observed_deployment
from meshserve.controller.watcher import Informer

log = logging.getLogger(__name__)


class KubeDeployments:
    """RuntimeBackend over apps/v1 Deployments (the Deployment informer is the observed state)."""

    def __init__(self, api: KubeApi, informer: Informer) -> None:
        self.api = api
        self.informer = informer

    def observed(self, namespace: str | None = None) -> dict[str, ObservedDeployment]:
        """Runtime Deployments by name, of `namespace` (None: all the informer holds, one namespace)."""
        found = (observed_deployment(o) for (ns, _), o in self.informer.store.items() if namespace is None or ns == namespace)
        return {d.name: d for d in found if d.name}

    async def apply(self, action: DeploymentAction, *, namespace: str) -> None:
        dep = kube.DEPLOYMENT
        api = self.api
        if action.kind is ActionKind.CREATE:
            assert action.manifest is not None
            try:
                written = await api.create(dep, namespace=namespace, body=action.manifest)
            except KubeError as err:
                if err.status != 409:
                    raise
                written = await api.merge_patch(dep, namespace=namespace, name=action.name, patch=action.manifest)
        elif action.kind is ActionKind.PATCH:
            assert action.manifest is not None
            written = await api.merge_patch(dep, namespace=namespace, name=action.name, patch=action.manifest)
        elif action.kind is ActionKind.SCALE:
            written = await api.merge_patch(
                dep, namespace=namespace, name=action.name, patch={"spec": {"replicas": action.replicas}}
            )
        else:
            await api.delete(dep, namespace=namespace, name=action.name)
            self.informer.store.pop((namespace, action.name), None)
            return
        self.informer.observe(written)


async def write_status(
    api: KubeApi, informer: Informer, *, kind: ResourceKind, obj: JSON, cr: PredictorCR,
    previous: PredictorStatus, new: PredictorStatus, now: datetime,
) -> None:
    """Merge-patch `new` into the CR's `/status` unless the CR already carries it; the written
    object goes into `informer` (the informer of `kind`)."""
    raw = obj.get("status")
    has_status = isinstance(raw, Mapping) and bool(raw.get("modelStatus" if kind is kube.INFERENCE_SERVICE else "transitionStatus"))
    if has_status and previous == new:
        return
    if kind is kube.INFERENCE_SERVICE:
        body = to_isvc_status(new, previous_raw=raw, now=now, observed_generation=cr.generation or None)
    else:
        body = to_predictor_status(new)
    patch: JSON = {"status": body}
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    if rv and isinstance(api, KubeApi):   # optimistic concurrency (the local store takes status alone)
        patch["metadata"] = {"resourceVersion": rv}
    try:
        written = await api.merge_patch(kind, namespace=cr.ref.namespace, name=cr.ref.name, patch=patch, subresource="status")
    except KubeError as err:
        if err.status == 404:
            return    # deleted meanwhile: its DELETED event enqueues the key again
        raise
    informer.observe(written)
    log.info("%s status: %s/%s active=%s", cr.ref, new.transition_status.value, new.active_model_state.value,
             new.last_failure_info.reason.value if new.last_failure_info else "-")


async def hold_finalizer(api: KubeApi, informer: Informer, *, kind: ResourceKind, obj: JSON, name: str) -> JSON:
    """Add the finalizer `name` to the CR `obj` unless it has it (or is being deleted); returns
    the CR as written (or `obj` unchanged)."""
    ops = finalizers.add_patch(obj, name)
    if ops is None:
        return obj
    meta = obj.get("metadata") or {}
    try:
        written = await api.json_patch(kind, namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""), ops=ops)
    except KubeError as err:
        await _raise_conflict_if_stale(api, kind=kind, obj=obj, err=err)
        raise
    informer.observe(written)
    return written


async def _raise_conflict_if_stale(api: KubeApi, *, kind: ResourceKind, obj: JSON, err: KubeError) -> None:
    """A JSON patch `test` failing (422) on a CR changed since `obj` is a conflict: raise it as one."""
    if err.status != 422 or isinstance(err, KubeConflict):
        return
    meta = obj.get("metadata") or {}
    fresh = await api.get(kind, namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""))
    fresh_rv = str(((fresh or {}).get("metadata") or {}).get("resourceVersion") or "")
    if fresh is None or fresh_rv != str(meta.get("resourceVersion") or ""):
        raise KubeConflict(409, f"{kind.kind} changed since resourceVersion {meta.get('resourceVersion')}: {err.message}",
                           "Conflict") from err


async def release_finalizer(api: KubeApi, *, kind: ResourceKind, obj: JSON, name: str) -> None:
    """Remove the finalizer `name` from the CR `obj` (the API server then deletes a CR being
    deleted that has no other finalizer)."""
    ops = finalizers.remove_patch(obj, name)
    if ops is None:
        return
    meta = obj.get("metadata") or {}
    try:
        await api.json_patch(kind, namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""), ops=ops)
    except KubeError as err:
        if err.status != 404:
            await _raise_conflict_if_stale(api, kind=kind, obj=obj, err=err)
            raise
    log.info("%s %s/%s: finalizer %s removed", kind.kind, meta.get("namespace"), meta.get("name"), name)


def _hash_of(obj: Mapping[str, object] | None) -> str:
    meta = (obj or {}).get("metadata") or {}
    annotations = (meta.get("annotations") if isinstance(meta, Mapping) else None) or {}
    return str(annotations.get(SPEC_HASH_ANNOTATION) or "") if isinstance(annotations, Mapping) else ""


async def apply_owned(api: KubeApi, informer: Informer, *, kind: ResourceKind, manifest: Mapping[str, object]) -> str:
    """Make the object of `manifest` (a router Deployment or Service) exist as built: create
    it, or replace it (PUT from the stored resourceVersion) when its spec-hash differs. A
    Deployment keeps the replicas it has (someone may have scaled it); a Service keeps its
    cluster IP, and is deleted and created again when it must change between headless and
    not (`clusterIP` is immutable). Returns what was done: "", "created", "replaced", "recreated"."""
    meta = manifest["metadata"]
    assert isinstance(meta, Mapping)
    ns, name = str(meta["namespace"]), str(meta["name"])
    current = informer.get(ns, name)
    body: dict[str, object] = copy.deepcopy(dict(manifest))
    if current is not None and _hash_of(current) == _hash_of(manifest):
        return ""
    done = "created"
    if current is not None:
        cur_spec = current.get("spec") or {}
        spec = body["spec"]
        assert isinstance(spec, dict)
        if kind is kube.SERVICE and is_headless(current) != is_headless(body):
            await api.delete(kind, namespace=ns, name=name)
            informer.store.pop((ns, name), None)
            done = "recreated"
        else:
            if kind is kube.DEPLOYMENT and "replicas" in cur_spec:
                spec["replicas"] = cur_spec["replicas"]
            if kind is kube.SERVICE:
                for key in ("clusterIP", "clusterIPs"):
                    if key in cur_spec:
                        spec[key] = cur_spec[key]
            body_meta = body["metadata"]
            assert isinstance(body_meta, dict)
            body_meta["resourceVersion"] = str((current.get("metadata") or {}).get("resourceVersion") or "")
            written = await api.replace(kind, namespace=ns, name=name, body=body)
            informer.observe(written)
            return "replaced"
    try:
        written = await api.create(kind, namespace=ns, body=body)
    except KubeError as err:
        if err.status != 409:
            raise
        # made meanwhile (or not in our informer yet): read it and replace it on the next pass
        fresh = await api.get(kind, namespace=ns, name=name)
        if fresh is not None:
            informer.observe(fresh)
        raise KubeConflict(409, f"{kind.kind} {ns}/{name} exists already; replacing it", "Conflict") from err
    informer.observe(written)
    return done


async def delete_owned(api: KubeApi, informer: Informer, *, kind: ResourceKind, namespace: str, name: str) -> None:
    await api.delete(kind, namespace=namespace, name=name)
    informer.store.pop((namespace, name), None)
