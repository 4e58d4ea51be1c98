"""Per-copy concurrency limits, `mm-balanced` and `mm-required` through the router's gRPC
door, over real sockets on port 0.

The router is the real one (`RouterApp`'s gRPC handlers, data plane, table, upstream
channels). Stand-ins: a gRPC scheduler answering `EnsureLoaded` with endpoints that carry
`max_concurrency` (what the scheduler puts on routes from the pods' reports), and KServe v2
model servers that answer ModelInfer with an output named after their pod, count the
requests they hold at once, and hold them until released. Waits poll a condition with a
bound; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from meshserve.common.errors import DeadlineExceeded
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as pbg
from meshserve.router.app import RouterApp
from meshserve.router.settings import RouterSettings
from meshserve.router.table import Endpoint

INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class ModelServer:
    pod_id: str
    address: str = ""
    held: int = 0            # requests inside the server now
    most: int = 0            # the most it ever held at once
    answered: int = 0
    models: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def infer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        message = v2.ModelInferRequest.FromString(request)
        self.models.append(message.model_name)
        self.held += 1
        self.most = max(self.most, self.held)
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        self.answered += 1
        return v2.ModelInferResponse(
            model_name=message.model_name,
            outputs=[v2.ModelInferResponse.InferOutputTensor(name=f"{message.model_name}@{self.pod_id}")],
        ).SerializeToString()


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != INFER:  # type: ignore[attr-defined]
            return None
        return grpc.unary_unary_rpc_method_handler(self.server.infer)


class Scheduler(pbg.SchedulerServicer):
    def __init__(self) -> None:
        self.models: dict[str, list[pb.Endpoint]] = {}

    async def EnsureLoaded(self, request: pb.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> pb.EnsureLoadedResponse:
        endpoints = self.models.get(request.model_id)
        if endpoints is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_id!r} not found")
        return pb.EnsureLoadedResponse(endpoints=endpoints)


@dataclass
class Stack:
    app: RouterApp
    channel: grpc.aio.Channel
    pods: dict[str, ModelServer]
    scheduler: Scheduler

    def serve(self, model: str, *pods: str, limit: int) -> None:
        self.scheduler.models[model] = [
            pb.Endpoint(pod_id=p, grpc_address=self.pods[p].address, max_concurrency=limit) for p in pods
        ]

    def infer(
        self, model: str, *, metadata: tuple[tuple[str, str], ...] = (), timeout: float | None = 30
    ) -> Any:
        return self.channel.unary_unary(INFER)(
            v2.ModelInferRequest(model_name=model).SerializeToString(), metadata=metadata, timeout=timeout
        )


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    servers: list[grpc.aio.Server] = []

    async def serve(add: Callable[[grpc.aio.Server], None]) -> int:
        server = grpc.aio.server()
        add(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return port

    pods = {p: ModelServer(p) for p in ("pod-1", "pod-2")}
    for pod in pods.values():
        port = await serve(lambda s, pod=pod: s.add_generic_rpc_handlers((_Handler(pod),)))  # type: ignore[misc]
        pod.address = f"127.0.0.1:{port}"
    scheduler = Scheduler()
    sched_port = await serve(lambda s: pbg.add_SchedulerServicer_to_server(scheduler, s))
    app = RouterApp(RouterSettings(scheduler_address=f"127.0.0.1:{sched_port}", default_timeout_seconds=30))
    app.table.apply(pb.RouteUpdate(snapshot=True), now=app.clock())
    front = await serve(lambda s: s.add_generic_rpc_handlers(app.grpc_handlers()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{front}") as channel:
        yield Stack(app, channel, pods, scheduler)
    for pod in pods.values():
        pod.release.set()
    for server in servers:
        await server.stop(grace=None)
    await app.grpc_upstream.close()
    await app.rest_upstream.close()
    await app.channel.close()


async def until(condition: Callable[[], bool], *, within: float = 10.0) -> None:
    """Poll `condition` (bounded): the way these tests wait for the router to get somewhere."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def queue_delay() -> tuple[float, float]:
    """(count, sum) of modelmesh_req_queue_delay_milliseconds (no per-model labels)."""
    count = REGISTRY.get_sample_value("modelmesh_req_queue_delay_milliseconds_count") or 0.0
    total = REGISTRY.get_sample_value("modelmesh_req_queue_delay_milliseconds_sum") or 0.0
    return count, total


# -- perModelConcurrencyLimit -----------------------------------------------------------------
async def test_a_limit_of_one_keeps_one_request_in_flight_and_answers_all_five(stack: Stack) -> None:
    stack.serve("m", "pod-1", limit=1)
    pod = stack.pods["pod-1"]
    before = queue_delay()
    calls = [asyncio.ensure_future(stack.infer("m")) for _ in range(5)]
    await until(lambda: pod.held == 1 and stack.app.dataplane.slots.queued("m") == 4)
    assert pod.held == 1  # four wait in the router, not at the model server
    pod.release.set()
    replies = [v2.ModelInferResponse.FromString(r) for r in await asyncio.gather(*calls)]
    assert [r.outputs[0].name for r in replies] == ["m@pod-1"] * 5
    assert pod.most == 1 and pod.answered == 5
    count, total = queue_delay()
    assert count - before[0] == 5      # every request of a limited model is observed (0 when it did not wait)
    assert total > before[1]           # and the four that waited added their time
    assert stack.app.dataplane.slots.in_flight == {} and stack.app.dataplane.slots.waiting == {}


async def test_the_waiting_go_to_the_least_loaded_copy_and_each_copy_keeps_its_limit(stack: Stack) -> None:
    stack.serve("m", "pod-1", "pod-2", limit=2)
    one, two = stack.pods["pod-1"], stack.pods["pod-2"]
    calls = [asyncio.ensure_future(stack.infer("m")) for _ in range(7)]
    await until(lambda: one.held == 2 and two.held == 2 and stack.app.dataplane.slots.queued("m") == 3)
    two.release.set()  # pod-2's slots free first: the three waiting go there, two at a time
    await until(lambda: two.answered == 5)
    assert one.held == 2 and two.most == 2
    one.release.set()
    await asyncio.gather(*calls)
    assert one.most == 2 and one.answered + two.answered == 7


async def test_a_request_that_finds_no_free_slot_before_its_deadline_is_deadline_exceeded(stack: Stack) -> None:
    stack.serve("m", "pod-1", limit=1)
    pod = stack.pods["pod-1"]
    first = asyncio.ensure_future(stack.infer("m"))
    await until(lambda: pod.held == 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.infer("m", timeout=0.5)  # the client's deadline ends while it waits
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def never(endpoint: Endpoint, budget: float) -> bytes:
        raise AssertionError("a request without a slot was sent")

    with pytest.raises(DeadlineExceeded, match="free slot on a copy of 'm'"):
        await stack.app.dataplane.call("m", never, budget=0.2)  # the router's own budget
    await until(lambda: stack.app.dataplane.slots.queued("m") == 0)  # both left the line
    pod.release.set()
    await first
    assert pod.answered == 1  # the ones that gave up never reached the model server
    assert stack.app.dataplane.slots.in_flight == {}


async def test_a_new_copy_on_the_route_stream_takes_the_waiting_at_once(stack: Stack) -> None:
    stack.serve("m", "pod-1", limit=1)
    one, two = stack.pods["pod-1"], stack.pods["pod-2"]
    two.release.set()
    first = asyncio.ensure_future(stack.infer("m"))
    await until(lambda: one.held == 1)
    waiting = asyncio.ensure_future(stack.infer("m"))
    await until(lambda: stack.app.dataplane.slots.queued("m") == 1)
    route = pb.Route(model_id="m", endpoints=[
        pb.Endpoint(pod_id=p, grpc_address=stack.pods[p].address, max_concurrency=1) for p in ("pod-1", "pod-2")
    ])
    update = pb.RouteUpdate(routes=[route], version=2)
    stack.app.table.apply(update, now=stack.app.clock())           # what the route watcher does
    stack.app.dataplane.routes_changed(r.model_id for r in update.routes)
    reply = v2.ModelInferResponse.FromString(await waiting)        # pod-1 still holds the first
    assert reply.outputs[0].name == "m@pod-2" and one.held == 1
    one.release.set()
    await first


async def test_beyond_upstreams_queue_bound_a_request_is_refused_at_once(stack: Stack) -> None:
    """Limit 1: a copy holds max(16, 8 x 1) = 16 requests (1 in flight, 15 waiting); the 17th
    is RESOURCE_EXHAUSTED `Model queue overload`, without waiting."""
    stack.serve("m", "pod-1", limit=1)
    pod = stack.pods["pod-1"]
    calls = [asyncio.ensure_future(stack.infer("m")) for _ in range(16)]
    await until(lambda: pod.held == 1 and stack.app.dataplane.slots.queued("m") == 15)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.infer("m")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (err.value.details() or "").startswith("Model queue overload")
    pod.release.set()
    await asyncio.gather(*calls)
    assert pod.answered == 16 and pod.most == 1


async def test_without_a_limit_nothing_waits(stack: Stack) -> None:
    stack.serve("m", "pod-1", limit=0)
    pod = stack.pods["pod-1"]
    calls = [asyncio.ensure_future(stack.infer("m")) for _ in range(5)]
    await until(lambda: pod.held == 5)
    pod.release.set()
    await asyncio.gather(*calls)


# -- mm-balanced ------------------------------------------------------------------------------
async def test_balanced_requests_are_served_and_a_bad_value_is_invalid_argument(stack: Stack) -> None:
    stack.serve("m", "pod-1", "pod-2", limit=0)
    for pod in stack.pods.values():
        pod.release.set()
    replies = [v2.ModelInferResponse.FromString(await stack.infer("m", metadata=(("mm-balanced", "true"),))) for _ in range(20)]
    assert {r.outputs[0].name for r in replies} <= {"m@pod-1", "m@pod-2"}
    await stack.infer("m", metadata=(("mm-balanced", "false"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.infer("m", metadata=(("mm-balanced", "yes"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mm-balanced header must be true or false" in (err.value.details() or "")


# -- mm-required: several models in one request -----------------------------------------------
@pytest.fixture
def two_models(stack: Stack) -> Stack:
    stack.serve("a", "pod-1", limit=0)
    stack.serve("b", "pod-2", limit=0)
    for pod in stack.pods.values():
        pod.release.set()
    return stack


async def test_a_request_naming_two_models_gets_both_answers_in_header_order(two_models: Stack) -> None:
    reply = v2.ModelInferResponse.FromString(
        await two_models.infer("", metadata=(("mm-model-id", "b"), ("mm-model-id", "a")))
    )
    assert [o.name for o in reply.outputs] == ["b@pod-2", "a@pod-1"]
    assert two_models.pods["pod-1"].models == ["a"] and two_models.pods["pod-2"].models == ["b"]


async def test_mm_required_any_leaves_out_a_missing_model_and_all_fails(two_models: Stack) -> None:
    both = (("mm-model-id", "a"), ("mm-model-id", "nope"))
    for required in ((), (("mm-required", "any"),), (("mm-required", "ANY"),)):
        reply = v2.ModelInferResponse.FromString(await two_models.infer("", metadata=both + required))
        assert [o.name for o in reply.outputs] == ["a@pod-1"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await two_models.infer("", metadata=(*both, ("mm-required", "all")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await two_models.infer("", metadata=(("mm-model-id", "x"), ("mm-model-id", "y")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "none of the requested models were found"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await two_models.infer("", metadata=(*both, ("mm-required", "some")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mm-required header must be all or any" in (err.value.details() or "")
