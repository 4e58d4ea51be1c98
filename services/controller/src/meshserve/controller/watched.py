"""Pure reads of what the controller watches: Kubernetes objects (plain dicts, as the informers
hold them) and the model/vmodel ids in the scheduler's change feed.

Used by `worker` to decide which keys a change enqueues (`spec_changed`, `owner_kind`) and by
`kube_writes` to read a runtime Deployment back (`observed_deployment`). No I/O, no clock: every
function maps its arguments to a value.

Invariant: a change that only a status write causes (`.status`, resourceVersion, managedFields)
is not a spec change, so writing a CR's status never enqueues that CR again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshserve.common import modelid
from meshserve.controller import kinds
from meshserve.controller.deployments import MANAGED_BY, SPEC_HASH_ANNOTATION
from meshserve.controller.kinds import JSON
from meshserve.controller.reconcile import ObservedDeployment


def metadata(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = (obj or {}).get("metadata") or {}
    return meta if isinstance(meta, Mapping) else {}


def spec_changed(old: JSON | None, new: JSON) -> bool:
    """True unless only `.status` / bookkeeping metadata differ (what a status write causes)."""
    if old is None:
        return True
    if old.get("spec") != new.get("spec"):
        return True
    o, n = metadata(old), metadata(new)
    return any(o.get(f) != n.get(f) for f in ("annotations", "labels", "deletionTimestamp", "generation"))


def observed_deployment(obj: Mapping[str, Any]) -> ObservedDeployment:
    meta = metadata(obj)
    spec = obj.get("spec") or {}
    replicas = spec.get("replicas")
    return ObservedDeployment(
        name=str(meta.get("name") or ""),
        replicas=int(replicas) if replicas is not None else 1,
        spec_hash=str((meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION) or ""),
        managed=(meta.get("labels") or {}).get("app.kubernetes.io/managed-by") == MANAGED_BY,
    )


def owner_kind(model_or_vmodel_id: str) -> tuple[str, str]:
    """(CR kind or "", vmodel name) for a model id `<name>__isvc-<hash>` / `__ksp-`, or a bare vmodel id."""
    name, sep, rest = model_or_vmodel_id.rpartition("__")
    if not sep:
        return "", model_or_vmodel_id
    if rest.startswith(f"{modelid.SOURCE_ISVC}-"):
        return kinds.INFERENCE_SERVICE.kind, name
    if rest.startswith(f"{modelid.SOURCE_PREDICTOR}-"):
        return kinds.PREDICTOR.kind, name
    return "", model_or_vmodel_id
