"""The data plane with a copy that does not answer (its pod hung: SIGSTOP), against a real
gRPC scheduler stand-in on port 0: after `HUNG_CHECK_AFTER_S` the scheduler is asked with the
pod as suspect; when it no longer routes the model there (it dropped the hung pod and
re-placed the copy) the request is cancelled on the hung copy and answered by the new one;
when it still routes it there (a slow model on a live pod), the request is left to finish on
its copy, sent once, never failed for being slow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as pbg
from meshserve.router import dataplane
from meshserve.router.dataplane import DataPlane
from meshserve.router.scheduler_client import SchedulerClient
from meshserve.router.settings import RouterSettings
from meshserve.router.table import Endpoint, RoutingTable


class Scheduler(pbg.SchedulerServicer):
    """Answers EnsureLoaded with the copies on `pods`; `asked` is set at each request."""

    def __init__(self, pods: list[str]) -> None:
        self.pods = pods
        self.requests: list[pb.EnsureLoadedRequest] = []
        self.asked = asyncio.Event()

    async def EnsureLoaded(self, request: pb.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> pb.EnsureLoadedResponse:
        self.requests.append(request)
        self.asked.set()
        return pb.EnsureLoadedResponse(endpoints=[pb.Endpoint(pod_id=p, grpc_address=f"{p}:1") for p in self.pods])


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataplane, "HUNG_CHECK_AFTER_S", 0.05)


@pytest.fixture
async def scheduler() -> AsyncIterator[tuple[Scheduler, pbg.SchedulerStub]]:
    servicer = Scheduler(["p-new"])
    server = grpc.aio.server()
    pbg.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, pbg.SchedulerStub(channel)
    await server.stop(grace=None)


def _plane(stub: pbg.SchedulerStub, *pods: str) -> DataPlane:
    table = RoutingTable(fallback_seconds=30)
    route = pb.Route(model_id="m", endpoints=[pb.Endpoint(pod_id=p, grpc_address=f"{p}:1") for p in pods])
    table.apply(pb.RouteUpdate(snapshot=True, routes=[route]), now=0)
    return DataPlane(settings=RouterSettings(), table=table, scheduler=SchedulerClient(stub, router_id="r"), clock=lambda: 1)


async def test_a_request_on_a_hung_copy_is_answered_by_the_copy_the_scheduler_placed_instead(
    scheduler: tuple[Scheduler, pbg.SchedulerStub],
) -> None:
    servicer, stub = scheduler
    plane = _plane(stub, "p-hung")
    sent: list[str] = []
    cancelled = asyncio.Event()

    async def send(endpoint: Endpoint, budget: float) -> str:
        sent.append(endpoint.pod_id)
        if endpoint.pod_id == "p-hung":
            try:
                await asyncio.Event().wait()   # a stopped process: the connection is open, nothing answers
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return f"answer from {endpoint.pod_id}"

    async with asyncio.timeout(30):   # the hung copy alone would never answer
        assert await plane.call("m", send, budget=30) == "answer from p-new"
    assert sent == ["p-hung", "p-new"] and cancelled.is_set()
    assert [list(r.suspect_pods) for r in servicer.requests] == [["p-hung"]]
    assert plane.in_flight["p-hung"] == 0 and plane.in_flight["p-new"] == 0
    assert plane.table.endpoints("m", now=1) == (Endpoint("p-new", "p-new:1", ""),)


async def test_a_slow_copy_the_scheduler_keeps_finishes_the_request_sent_once(
    scheduler: tuple[Scheduler, pbg.SchedulerStub],
) -> None:
    servicer, stub = scheduler
    servicer.pods = ["p-slow"]   # the pod answered its probe: the scheduler keeps routing there
    plane = _plane(stub, "p-slow")
    sent: list[str] = []

    async def send(endpoint: Endpoint, budget: float) -> str:
        sent.append(endpoint.pod_id)
        await servicer.asked.wait()   # slower than the check: answers only after the scheduler was asked
        return f"answer from {endpoint.pod_id}"

    assert await plane.call("m", send, budget=30) == "answer from p-slow"
    assert sent == ["p-slow"]
    assert servicer.requests and all(list(r.suspect_pods) == ["p-slow"] for r in servicer.requests)


async def test_a_request_whose_deadline_comes_first_fails_with_its_own_deadline(
    scheduler: tuple[Scheduler, pbg.SchedulerStub],
) -> None:
    """The check never outlives the request: a copy that answers neither it nor the
    scheduler's probe ends the call at the deadline `send` was given."""
    servicer, stub = scheduler
    servicer.pods = ["p-slow"]
    plane = _plane(stub, "p-slow")

    async def send(endpoint: Endpoint, budget: float) -> str:
        async with asyncio.timeout(budget):
            await asyncio.Event().wait()
        raise AssertionError("unreachable")

    with pytest.raises(TimeoutError):
        await plane.call("m", send, budget=0.3)
    assert plane.in_flight["p-slow"] == 0
