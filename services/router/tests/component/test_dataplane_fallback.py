"""The data plane on a fallback route (a route from before the scheduler's last snapshot),
against a real gRPC scheduler on port 0: a copy that is still there answers without the
scheduler; one that is gone makes the data plane ask the scheduler (`EnsureLoaded`), as
for a model without a route, and the client gets the answer, not an error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from meshserve.common.errors import Unavailable
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as pbg
from meshserve.router.dataplane import DataPlane
from meshserve.router.scheduler_client import SchedulerClient
from meshserve.router.settings import RouterSettings
from meshserve.router.table import Endpoint, RoutingTable
from meshserve.router.upstream_errors import CopyGone

NOW = 1000.0


class Scheduler(pbg.SchedulerServicer):
    """Loads every model on `pod` (or answers UNAVAILABLE when `pod` is None)."""

    def __init__(self) -> None:
        self.pod: str | None = "p-new"
        self.requests: list[pb.EnsureLoadedRequest] = []

    async def EnsureLoaded(self, request: pb.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> pb.EnsureLoadedResponse:
        self.requests.append(request)
        if self.pod is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no pods")
        return pb.EnsureLoadedResponse(endpoints=[pb.Endpoint(pod_id=self.pod, grpc_address=f"{self.pod}:1")])


@pytest.fixture
async def scheduler() -> AsyncIterator[tuple[Scheduler, pbg.SchedulerStub]]:
    servicer = Scheduler()
    server = grpc.aio.server()
    pbg.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, pbg.SchedulerStub(channel)
    await server.stop(grace=None)


def _after_restart(*pods: str) -> RoutingTable:
    """`m` was on `pods`, vmodel `v` pointed at it; then the empty snapshot of a restarted Redis."""
    table = RoutingTable(fallback_seconds=30)
    route = pb.Route(model_id="m", endpoints=[pb.Endpoint(pod_id=p, grpc_address=f"{p}:1") for p in pods])
    table.apply(pb.RouteUpdate(snapshot=True, routes=[route], vmodels=[pb.VModelRoute(vmodel_id="v", model_id="m")]), now=0)
    table.apply(pb.RouteUpdate(snapshot=True), now=NOW)
    return table


def _plane(table: RoutingTable, stub: pbg.SchedulerStub) -> DataPlane:
    return DataPlane(
        settings=RouterSettings(), table=table, scheduler=SchedulerClient(stub, router_id="r"), clock=lambda: NOW + 1
    )


def _send(alive: set[str], sent: list[str]):  # type: ignore[no-untyped-def]
    async def send(endpoint: Endpoint, budget: float) -> str:
        sent.append(endpoint.pod_id)
        if endpoint.pod_id not in alive:
            raise CopyGone("connection refused")
        return f"answer from {endpoint.pod_id}"

    return send


async def test_a_fallback_copy_still_there_answers_without_the_scheduler(scheduler: tuple[Scheduler, pbg.SchedulerStub]) -> None:
    servicer, stub = scheduler
    plane, sent = _plane(_after_restart("p-old"), stub), []
    model_id = plane.resolve("v")
    assert model_id == "m"
    assert await plane.call(model_id, _send({"p-old"}, sent), budget=5) == "answer from p-old"
    assert sent == ["p-old"] and servicer.requests == []


@pytest.mark.parametrize("pods", [("p-old",), ("p-old", "p-older")])
async def test_a_gone_fallback_copy_asks_the_scheduler_and_the_client_gets_the_answer(
    scheduler: tuple[Scheduler, pbg.SchedulerStub], pods: tuple[str, ...]
) -> None:
    """Even with two stale endpoints: the second try goes to the scheduler's answer, not
    to the fallback's other endpoint (both would fail, and the client would see an error)."""
    servicer, stub = scheduler
    table = _after_restart(*pods)
    plane, sent = _plane(table, stub), []
    assert await plane.call("m", _send({"p-new"}, sent), budget=5) == "answer from p-new"
    assert sent[-1] == "p-new" and len(sent) == 2
    [request] = servicer.requests
    assert request.model_id == "m" and list(request.suspect_pods) == sent[:1]
    assert table.lookup("m", now=NOW + 1) == ((Endpoint("p-new", "p-new:1", ""),), False)


async def test_when_the_scheduler_cannot_load_either_the_client_sees_its_error(
    scheduler: tuple[Scheduler, pbg.SchedulerStub],
) -> None:
    servicer, stub = scheduler
    servicer.pod = None
    plane, sent = _plane(_after_restart("p-old"), stub), []
    with pytest.raises(Unavailable):
        await plane.call("m", _send(set(), sent), budget=5)
    assert sent == ["p-old"] and len(servicer.requests) == 1
