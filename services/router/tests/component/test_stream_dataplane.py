"""ModelStreamInfer goes through the data plane as unary calls do (issue 16): its copy is
counted in flight for the whole stream (so pod choice sees it), the stream is counted in
the usage the scheduler is told about, and a copy that is gone before it answered is
replaced by another, with the requests sent so far replayed to it.

All over real sockets on port 0: the router's own gRPC handlers (`RouterApp`), a stand-in
scheduler (EnsureLoaded, ReportUsage) and stand-in model servers (grpc.aio servers whose
generic handler answers ModelStreamInfer once per request and ModelInfer once, with the
pod's id in the reply). Tests assert on what the client gets, what the model servers and
the scheduler received, and the data plane's own counters.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as pbg
from meshserve.router.app import RouterApp
from meshserve.router.settings import RouterSettings

MODEL = "sm__isvc-0123456789"
VMODEL = "sm"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
INFER = "/inference.GRPCInferenceService/ModelInfer"


def _request(name: str, request_id: str) -> bytes:
    request = v2.ModelInferRequest(model_name=name, id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    return request.SerializeToString()


@dataclass
class ModelServer:
    pod_id: str
    received: list[v2.ModelInferRequest] = field(default_factory=list)
    address: str = ""

    def _reply(self, request: v2.ModelInferRequest) -> v2.ModelInferResponse:
        self.received.append(request)
        return v2.ModelInferResponse(model_name=request.model_name, id=f"{self.pod_id}/{request.id}")


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]
        server = self.server
        if method == STREAM:

            async def stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
                async for raw in requests:
                    reply = server._reply(v2.ModelInferRequest.FromString(raw))
                    yield reply.SerializeToString()

            return grpc.stream_stream_rpc_method_handler(stream)
        if method == INFER:

            async def infer(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return server._reply(v2.ModelInferRequest.FromString(raw)).SerializeToString()

            return grpc.unary_unary_rpc_method_handler(infer)
        return None


class Scheduler(pbg.SchedulerServicer):
    """Places a new copy on `next_pod` when asked; records what it is asked and told."""

    def __init__(self) -> None:
        self.next_pod: ModelServer | None = None
        self.ensured: list[pb.EnsureLoadedRequest] = []
        self.usage: list[pb.ReportUsageRequest] = []

    async def EnsureLoaded(self, request: pb.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> pb.EnsureLoadedResponse:
        self.ensured.append(request)
        if self.next_pod is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no pods")
        return pb.EnsureLoadedResponse(endpoints=[pb.Endpoint(pod_id=self.next_pod.pod_id, grpc_address=self.next_pod.address)])

    async def ReportUsage(self, request: pb.ReportUsageRequest, context: grpc.aio.ServicerContext) -> pb.ReportUsageResponse:
        self.usage.append(request)
        return pb.ReportUsageResponse()


@dataclass
class Router:
    app: RouterApp
    channel: grpc.aio.Channel
    pods: dict[str, ModelServer]
    scheduler: Scheduler

    def route(self, *endpoints: tuple[str, str]) -> None:
        """What the scheduler's route stream would push: the vmodel, and copies on `endpoints`."""
        route = pb.Route(model_id=MODEL, endpoints=[pb.Endpoint(pod_id=p, grpc_address=a) for p, a in endpoints])
        update = pb.RouteUpdate(snapshot=True, routes=[route], vmodels=[pb.VModelRoute(vmodel_id=VMODEL, model_id=MODEL)])
        self.app.table.apply(update, now=self.app.clock())


async def _serve(handler: grpc.GenericRpcHandler | None = None, servicer: Scheduler | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    if handler is not None:
        server.add_generic_rpc_handlers((handler,))
    if servicer is not None:
        pbg.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    servers: list[grpc.aio.Server] = []
    pods = {pod_id: ModelServer(pod_id) for pod_id in ("pod-1", "pod-2")}
    for pod in pods.values():
        server, port = await _serve(handler=_Generic(pod))
        servers.append(server)
        pod.address = f"127.0.0.1:{port}"
    scheduler = Scheduler()
    sched_server, sched_port = await _serve(servicer=scheduler)
    servers.append(sched_server)
    app = RouterApp(RouterSettings(scheduler_address=f"127.0.0.1:{sched_port}", default_timeout_seconds=30))
    front = grpc.aio.server()
    front.add_generic_rpc_handlers(app.grpc_handlers())
    port = front.add_insecure_port("127.0.0.1:0")
    await front.start()
    servers.append(front)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Router(app, channel, pods, scheduler)
    for server in servers:
        await server.stop(grace=None)
    await app.grpc_upstream.close()
    await app.rest_upstream.close()
    await app.channel.close()


def _pod_of(reply: bytes) -> str:
    return v2.ModelInferResponse.FromString(reply).id.split("/")[0]


async def test_an_open_stream_is_in_flight_on_its_copy_and_counted_in_usage(router: Router) -> None:
    router.route(*((p.pod_id, p.address) for p in router.pods.values()))
    stream = router.channel.stream_stream(STREAM)(timeout=30)
    await stream.write(_request(VMODEL, "s1"))
    streamed_on = _pod_of(await stream.read())
    other = "pod-2" if streamed_on == "pod-1" else "pod-1"
    assert router.app.dataplane.in_flight[streamed_on] == 1

    # two copies: the power of two choices looks at both, and the one streaming is busier
    infer = router.channel.unary_unary(INFER)
    answered = [_pod_of(await infer(_request(VMODEL, f"u{i}"), timeout=30)) for i in range(12)]
    assert answered == [other] * 12

    await stream.write(_request(VMODEL, "s2"))
    assert _pod_of(await stream.read()) == streamed_on
    await stream.done_writing()
    assert await stream.read() == grpc.aio.EOF
    assert await stream.code() == grpc.StatusCode.OK
    assert router.app.dataplane.in_flight[streamed_on] == 0
    assert [r.model_name for r in router.pods[streamed_on].received] == [MODEL, MODEL]

    await router.app.flush_usage()
    [report] = router.scheduler.usage
    assert {u.model_id: u.requests for u in report.usage} == {MODEL: 13}  # 12 unary calls and the stream


def _dead_address() -> str:
    """An address nothing listens on (bound and closed: the kernel refuses connections)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_stream_whose_copy_is_gone_goes_to_the_copy_the_scheduler_places(router: Router) -> None:
    router.route(("pod-dead", _dead_address()))
    router.scheduler.next_pod = router.pods["pod-1"]
    stream = router.channel.stream_stream(STREAM)(timeout=30)
    await stream.write(_request(VMODEL, "s1"))
    await stream.write(_request(VMODEL, "s2"))
    await stream.done_writing()
    replies = [reply async for reply in stream]
    assert await stream.code() == grpc.StatusCode.OK
    assert [_pod_of(r) for r in replies] == ["pod-1", "pod-1"]
    assert [(r.model_name, r.id) for r in router.pods["pod-1"].received] == [(MODEL, "s1"), (MODEL, "s2")]
    [ensured] = router.scheduler.ensured
    assert ensured.model_id == MODEL and list(ensured.suspect_pods) == ["pod-dead"]


async def test_a_stream_is_not_retried_when_no_copy_can_be_placed(router: Router) -> None:
    router.route(("pod-dead", _dead_address()))
    stream = router.channel.stream_stream(STREAM)(timeout=30)
    await stream.write(_request(VMODEL, "s1"))
    await stream.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [reply async for reply in stream]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert router.app.dataplane.in_flight["pod-dead"] == 0 and not router.app.dataplane.usage
