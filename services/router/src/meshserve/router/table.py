"""The router's routing table: vmodel -> model id, model id -> endpoints of loaded copies.

Filled only from the scheduler's `WatchRoutes` stream (a snapshot, then changes); the
router never reads Redis or Postgres. Mutated on the event loop only (no locks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    pod_id: str
    grpc_address: str
    rest_address: str


class RoutingTable:
    def __init__(self) -> None:
        self.models: dict[str, tuple[Endpoint, ...]] = {}
        self.vmodels: dict[str, str] = {}
        self.synced = False
        self.version = 0

    def apply(self, update: Any) -> None:
        """Apply a `RouteUpdate` protobuf (snapshot or change)."""
        if update.snapshot:
            self.models = {}
            self.vmodels = {}
            self.synced = True
        for route in update.routes:
            self.models[route.model_id] = tuple(
                Endpoint(e.pod_id, e.grpc_address, e.rest_address) for e in route.endpoints
            )
        for model_id in update.removed_models:
            self.models.pop(model_id, None)
        for vm in update.vmodels:
            self.vmodels[vm.vmodel_id] = vm.model_id
        for vmodel_id in update.removed_vmodels:
            self.vmodels.pop(vmodel_id, None)
        # a snapshot may start a new epoch of the scheduler's route log (its versions restart)
        self.version = update.version if update.snapshot else max(self.version, update.version)

    def resolve(self, name: str) -> str:
        """vmodel id -> its active model id; anything else is taken as a model id."""
        return self.vmodels.get(name, name)

    def endpoints(self, model_id: str) -> tuple[Endpoint, ...]:
        return self.models.get(model_id, ())

    def set_endpoints(self, model_id: str, endpoints: tuple[Endpoint, ...]) -> None:
        self.models[model_id] = endpoints

    def drop_endpoint(self, model_id: str, pod_id: str) -> None:
        self.models[model_id] = tuple(e for e in self.models.get(model_id, ()) if e.pod_id != pod_id)
