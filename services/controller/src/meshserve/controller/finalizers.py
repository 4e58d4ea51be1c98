"""The controller's finalizer on the InferenceServices and Predictors it registers (pure).

Why: the scheduler's vmodel outlives its CR unless someone unregisters it. Without a finalizer a
CR deleted while the controller is down is simply gone when it comes back (its list no longer
has it, no DELETED event is replayed), and its vmodel stays registered for ever. With one, the
API server only marks the CR (`deletionTimestamp`) until the controller has deleted the vmodel
and removed the finalizer, whenever that is.

Owns: the finalizer's name and the JSON patches (RFC 6902) that add and remove it. No I/O.

Invariants:
* The finalizer is added before the first registration (a crash in between cannot leave a
  registration without one), and never to a CR being deleted (the API server forbids it).
* Patches are safe against concurrent writers: removal `test`s the entry at the index it
  removes, the first addition `test`s the resourceVersion it was computed from, later ones
  append; a stale view fails the patch (422) and the reconcile is retried, never clobbering
  another controller's finalizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FINALIZER = "meshserve.io/vmodel"
"""Kept on a CR while its vmodel may be registered with the scheduler."""


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata") or {}
    return meta if isinstance(meta, Mapping) else {}


def finalizers(obj: Mapping[str, Any]) -> list[str]:
    found = _meta(obj).get("finalizers") or []
    return [str(f) for f in found] if isinstance(found, list) else []


def has_finalizer(obj: Mapping[str, Any], name: str = FINALIZER) -> bool:
    return name in finalizers(obj)


def add_patch(obj: Mapping[str, Any], name: str = FINALIZER) -> list[dict[str, Any]] | None:
    """The JSON patch that adds `name`; None when it is there already or the CR is being deleted."""
    meta = _meta(obj)
    if meta.get("deletionTimestamp") or has_finalizer(obj, name):
        return None
    if "finalizers" in meta and isinstance(meta.get("finalizers"), list):
        return [{"op": "add", "path": "/metadata/finalizers/-", "value": name}]
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": str(meta.get("resourceVersion") or "")},
        {"op": "add", "path": "/metadata/finalizers", "value": [name]},
    ]


def remove_patch(obj: Mapping[str, Any], name: str = FINALIZER) -> list[dict[str, Any]] | None:
    """The JSON patch that removes `name`; None when the CR does not carry it."""
    current = finalizers(obj)
    if name not in current:
        return None
    index = current.index(name)
    return [
        {"op": "test", "path": f"/metadata/finalizers/{index}", "value": name},
        {"op": "remove", "path": f"/metadata/finalizers/{index}"},
    ]
