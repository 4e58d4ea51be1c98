"""The router's client of the scheduler (`meshserve.v1.Scheduler`): the one module that calls it.

Owns the three calls the router makes: `EnsureLoaded` (a loaded copy of a model, as the
endpoints that hold it; concurrent misses are coalesced by the data plane before they
get here), `WatchRoutes` (the route stream the routing table is filled from) and
`ReportUsage` (request counts per model, the input of the scheduler's copy scaling and
eviction). It turns the scheduler's statuses into the shared `MeshError`s, so nothing
above it sees grpc errors from the scheduler.

May import: `meshserve.common` (errors, the generated scheduler protos) and the routing
table's `Endpoint`; never a door, the data plane or the app.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import grpc

from meshserve.common.errors import NotFound, from_grpc
from meshserve.common.proto.meshserve.v1 import scheduler_pb2, scheduler_pb2_grpc
from meshserve.router.table import Endpoint

REPORT_TIMEOUT_SECONDS = 5.0


class SchedulerClient:
    """The scheduler's calls, for router `router_id`, over `stub` (the app owns its channel)."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerStub, *, router_id: str) -> None:
        self.stub = stub
        self.router_id = router_id

    async def ensure_loaded(self, model_id: str, *, suspect: str | None, budget: float) -> tuple[Endpoint, ...]:
        """The endpoints of the loaded copies of `model_id` (the scheduler loads one if none).

        `budget`: seconds the call may take. `suspect`: a pod whose copy was found gone, so the scheduler checks it first.
        Raises NotFound for a model that is not registered, else the scheduler's status."""
        request = scheduler_pb2.EnsureLoadedRequest(model_id=model_id, suspect_pods=[suspect] if suspect else [])
        try:
            response = await self.stub.EnsureLoaded(request, timeout=budget)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"model {model_id!r} not found") from err
            raise from_grpc(code, err.details() or code.name) from err
        return tuple(Endpoint(e.pod_id, e.grpc_address, e.rest_address, e.max_concurrency) for e in response.endpoints)

    def watch_routes(self) -> AsyncIterator[scheduler_pb2.RouteUpdate]:
        """The route stream: a snapshot, then changes. It raises `grpc.aio.AioRpcError` when it
        breaks; the caller reconnects (and gets a new snapshot)."""
        stream: AsyncIterator[scheduler_pb2.RouteUpdate] = self.stub.WatchRoutes(
            scheduler_pb2.WatchRoutesRequest(router_id=self.router_id)
        )
        return stream

    async def report_usage(self, usage: Mapping[str, int], *, interval_seconds: float) -> None:
        """Send the request counts of the last `interval_seconds`; a failed report is dropped
        (usage is a rate signal, the next report carries on)."""
        if not usage:
            return
        request = scheduler_pb2.ReportUsageRequest(
            router_id=self.router_id,
            usage=[scheduler_pb2.ModelUsage(model_id=m, requests=n) for m, n in usage.items()],
            interval_ms=int(interval_seconds * 1000),
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.stub.ReportUsage(request, timeout=REPORT_TIMEOUT_SECONDS)
