"""The router's routing table: vmodel -> model id, model id -> endpoints of loaded copies.

Filled only from the scheduler's `WatchRoutes` stream (a snapshot, then changes); the
router never reads Redis or Postgres. Mutated on the event loop only (no locks). PURE:
the time is passed in (`now`, seconds of a monotonic clock).

Fallback routes. When the scheduler's Redis restarts, its route hub loads an empty table,
and routers get a snapshot without the models that are still loaded on pods; the routes
come back only as the pullers report again. So a snapshot does not simply drop the
routes it leaves out: a model that had endpoints and is missing from the snapshot (or
listed there without endpoints), and a vmodel missing from it, keep their last known
route as a fallback for `fallback_seconds`. A lookup uses the current route when there
is one, else a fallback that has not expired. Whatever names the model or vmodel later
replaces or clears its fallback: a change (with endpoints or without, or a removal), a
snapshot that has its endpoints (or the vmodel), endpoints from `EnsureLoaded`. A
fallback carried through several snapshots keeps the expiry it got first.

A fallback may point at a pod that no longer holds the model: the data plane then asks
the scheduler, as it does for a model without a route (dataplane.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    pod_id: str
    grpc_address: str
    rest_address: str
    max_concurrency: int = 0
    """Requests this router sends to the copy at once (the runtime's perModelConcurrencyLimit;
    0 = unlimited): the data plane queues the rest (balance.CopySlots)."""


Endpoints = tuple[Endpoint, ...]


@dataclass(frozen=True)
class Fallbacks:
    """How many fallback routes the table holds, and when the first of them expires."""

    models: int
    vmodels: int
    next_expiry: float | None


class RoutingTable:
    def __init__(self, *, fallback_seconds: float = 0.0) -> None:
        self.models: dict[str, Endpoints] = {}
        self.vmodels: dict[str, str] = {}
        self.fallback_seconds = fallback_seconds
        # last known routes a snapshot left out: (route, expiry)
        self.fallback_models: dict[str, tuple[Endpoints, float]] = {}
        self.fallback_vmodels: dict[str, tuple[str, float]] = {}
        self.synced = False
        self.version = 0

    def apply(self, update: Any, *, now: float) -> None:
        """Apply a `RouteUpdate` protobuf (snapshot or change) received at `now`."""
        if update.snapshot:
            self._snapshot(update, now)
        else:
            self._change(update)
        # a snapshot may start a new epoch of the scheduler's route log (its versions restart)
        self.version = update.version if update.snapshot else max(self.version, update.version)

    def _snapshot(self, update: Any, now: float) -> None:
        models = {route.model_id: _endpoints(route) for route in update.routes}
        vmodels = {vm.vmodel_id: vm.model_id for vm in update.vmodels}
        for model_id in update.removed_models:
            models.pop(model_id, None)
        for vmodel_id in update.removed_vmodels:
            vmodels.pop(vmodel_id, None)
        fallback_models: dict[str, tuple[Endpoints, float]] = {}
        fallback_vmodels: dict[str, tuple[str, float]] = {}
        if self.fallback_seconds > 0:
            until = now + self.fallback_seconds
            for model_id, (endpoints, expiry) in self.fallback_models.items():
                if expiry > now and not models.get(model_id):
                    fallback_models[model_id] = (endpoints, expiry)
            for model_id, endpoints in self.models.items():
                if endpoints and not models.get(model_id):
                    fallback_models[model_id] = (endpoints, until)
            for vmodel_id, (target, expiry) in self.fallback_vmodels.items():
                if expiry > now and vmodel_id not in vmodels:
                    fallback_vmodels[vmodel_id] = (target, expiry)
            for vmodel_id, target in self.vmodels.items():
                if vmodel_id not in vmodels:
                    fallback_vmodels[vmodel_id] = (target, until)
        self.models, self.vmodels = models, vmodels
        self.fallback_models, self.fallback_vmodels = fallback_models, fallback_vmodels
        self.synced = True

    def _change(self, update: Any) -> None:
        models, vmodels = self.models, self.vmodels
        for route in update.routes:
            models[route.model_id] = _endpoints(route)
        for model_id in update.removed_models:
            models.pop(model_id, None)
        for vm in update.vmodels:
            vmodels[vm.vmodel_id] = vm.model_id
        for vmodel_id in update.removed_vmodels:
            vmodels.pop(vmodel_id, None)
        if self.fallback_models:
            for route in update.routes:
                self.fallback_models.pop(route.model_id, None)
            for model_id in update.removed_models:
                self.fallback_models.pop(model_id, None)
        if self.fallback_vmodels:
            for vm in update.vmodels:
                self.fallback_vmodels.pop(vm.vmodel_id, None)
            for vmodel_id in update.removed_vmodels:
                self.fallback_vmodels.pop(vmodel_id, None)

    # -- lookups ----------------------------------------------------------------------------
    def resolve(self, name: str, *, now: float) -> str:
        """vmodel id -> its active model id; anything else is taken as a model id."""
        target = self.vmodels.get(name)
        if target is not None:
            return target
        fallback = self.fallback_vmodels.get(name)
        if fallback is not None and fallback[1] > now:
            return fallback[0]
        return name

    def lookup(self, model_id: str, *, now: float) -> tuple[Endpoints, bool]:
        """The model's endpoints, and whether they are a fallback (a route from before the
        last snapshot): the current route if it has endpoints, else an unexpired fallback."""
        endpoints = self.models.get(model_id)
        if endpoints:
            return endpoints, False
        fallback = self.fallback_models.get(model_id)
        if fallback is not None and fallback[1] > now:
            return fallback[0], True
        return (), False

    def endpoints(self, model_id: str, *, now: float) -> Endpoints:
        return self.lookup(model_id, now=now)[0]

    # -- what the data plane learns ---------------------------------------------------------
    def set_endpoints(self, model_id: str, endpoints: Endpoints) -> None:
        self.models[model_id] = endpoints
        self.fallback_models.pop(model_id, None)

    def drop_endpoint(self, model_id: str, pod_id: str) -> None:
        """The copy on `pod_id` is gone: drop it from the model's current route."""
        self.models[model_id] = tuple(e for e in self.models.get(model_id, ()) if e.pod_id != pod_id)

    def drop_fallback(self, model_id: str) -> None:
        """The model's fallback did not answer: forget it (the scheduler is asked instead)."""
        self.fallback_models.pop(model_id, None)

    def expire(self, *, now: float) -> Fallbacks:
        """Forget the fallbacks expired at `now`; say what is left."""
        self.fallback_models = {m: f for m, f in self.fallback_models.items() if f[1] > now}
        self.fallback_vmodels = {v: f for v, f in self.fallback_vmodels.items() if f[1] > now}
        expiries = [f[1] for f in self.fallback_models.values()] + [f[1] for f in self.fallback_vmodels.values()]
        return Fallbacks(len(self.fallback_models), len(self.fallback_vmodels), min(expiries, default=None))


def _endpoints(route: Any) -> Endpoints:
    return tuple(Endpoint(e.pod_id, e.grpc_address, e.rest_address, e.max_concurrency) for e in route.endpoints)
