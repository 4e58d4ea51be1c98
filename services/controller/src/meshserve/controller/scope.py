"""Which namespaces the controller serves, and the ids it gives the scheduler for each (pure).

Two modes, as upstream's controller (`NAMESPACE_SCOPE`, facts §2):

* **namespace scope** (the default): the controller's own namespace only; ids are sent as
  they are (`<name>__isvc-<hash>`, `<name>`, `<runtime>`): what earlier releases registered.
* **cluster scope**: the controller's own namespace and every namespace labelled
  `modelmesh-enabled: "true"`. One scheduler serves them all, so every id the controller sends
  for a namespaced object is prefixed `<namespace>__`: model ids
  (`<ns>__<name>__isvc-<hash>`), vmodel ids (`<ns>__<name>`) and runtime names
  (`<ns>__<runtime>`: the runtime pods of namespace ns register under that name). Namespace
  names are DNS labels (no `_`), so the first `__` of an id always ends its namespace, and the
  same name in two namespaces never collides. A model is also pinned to one runtime of its own
  namespace (`rt:<ns>__<runtime>`): formats are not namespaced (`mt:sklearn` is on every
  namespace's pods), so without the pin the scheduler could place it on another namespace's pod.

Owns: the label, the prefixing and its inverse, and `qualified_address` (a Service address
reachable from another namespace). No I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshserve.common import modelid
from meshserve.controller.specs import ModelSpec, PredictorCR

ENABLED_LABEL = "modelmesh-enabled"
"""Upstream's namespace label: `modelmesh-enabled: "true"` opts a namespace in (cluster scope)."""
SEPARATOR = "__"


def namespace_enabled(obj: Mapping[str, Any] | None) -> bool:
    """True when the Namespace object carries `modelmesh-enabled: "true"` and is not being deleted."""
    meta = (obj or {}).get("metadata") or {}
    if not isinstance(meta, Mapping):
        return False
    labels = meta.get("labels") or {}
    return isinstance(labels, Mapping) and str(labels.get(ENABLED_LABEL, "")).lower() == "true"


@dataclass(frozen=True)
class Scope:
    """The served namespaces' rule and the scheduler ids of their objects."""

    home: str
    """The controller's own namespace (always served; the model-serving-config lives there)."""
    cluster: bool = False

    def prefix(self, namespace: str) -> str:
        return f"{namespace}{SEPARATOR}" if self.cluster else ""

    def vmodel_id(self, namespace: str, name: str) -> str:
        return self.prefix(namespace) + name

    def model_id(self, namespace: str, model_id: str) -> str:
        return self.prefix(namespace) + model_id

    def runtime_id(self, namespace: str, runtime: str) -> str:
        """The runtime name the pods of `namespace` register with the scheduler."""
        return self.prefix(namespace) + runtime

    def split(self, scheduler_id: str) -> tuple[str, str]:
        """(namespace, unprefixed id) of an id the scheduler sent; in namespace scope the
        namespace is `home`. ("", id) when a cluster-scope id carries no namespace."""
        if not self.cluster:
            return self.home, scheduler_id
        namespace, sep, rest = scheduler_id.partition(SEPARATOR)
        if not sep or not namespace or "_" in namespace:
            return "", scheduler_id
        return namespace, rest

    def served(self, namespace: str, namespace_obj: Mapping[str, Any] | None) -> bool:
        """Is `namespace` served, given its Namespace object (None: not seen)?"""
        if namespace == self.home:
            return True
        return self.cluster and namespace_enabled(namespace_obj)


def qualified_address(address: str, *, service_namespace: str, client_namespace: str) -> str:
    """`host:port` as a client in `client_namespace` must dial it: a bare Service name
    (`meshserve-scheduler:8034`, no dot, not an IP) of `service_namespace` gets
    `.<service_namespace>` when the client is elsewhere; anything else is returned as it is."""
    if client_namespace == service_namespace:
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or "." in host or host.startswith("["):
        return address
    try:
        ipaddress.ip_address(host)
        return address
    except ValueError:
        pass
    if host == "localhost":
        return address
    return f"{host}.{service_namespace}:{port}"


def pinned_runtime(spec: ModelSpec, supporting: tuple[str, ...]) -> str:
    """The one runtime of its namespace a model is placed on in cluster scope: the one it
    names, else the first (sorted) runtime that supports it."""
    if spec.runtime and spec.runtime in supporting:
        return spec.runtime
    return supporting[0]


@dataclass(frozen=True)
class SchedulerModel:
    """What the scheduler is told about one CR: its vmodel id, model id and model spec."""

    vmodel_id: str
    model_id: str
    spec: ModelSpec | None


def scheduler_model(cr: PredictorCR, *, scope: Scope, supporting: tuple[str, ...] = ()) -> SchedulerModel:
    """The CR's ids and spec as the scheduler sees them: unchanged in namespace scope; in
    cluster scope prefixed with the namespace and pinned to `rt:<ns>__<runtime>` (the model
    id hashes the pinned spec, so a model that moves to another runtime gets a new id and
    its vmodel moves to it as on any spec change)."""
    ns = cr.ref.namespace
    if not scope.cluster:
        return SchedulerModel(vmodel_id=cr.vmodel_id, model_id=cr.model_id, spec=cr.spec)
    vmodel = scope.vmodel_id(ns, cr.vmodel_id)
    if cr.spec is None or not supporting:
        return SchedulerModel(vmodel_id=vmodel, model_id=scope.model_id(ns, cr.model_id), spec=cr.spec)
    spec = replace(cr.spec, runtime=scope.runtime_id(ns, pinned_runtime(cr.spec, supporting)))
    model = modelid.model_id(name=cr.ref.name, source=cr.source, spec=spec.canonical())
    return SchedulerModel(vmodel_id=vmodel, model_id=scope.model_id(ns, model), spec=spec)
