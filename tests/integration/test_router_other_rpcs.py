"""Any gRPC API a runtime serves, through the real router process (upstream's allowOtherRpcs).

The stack is the session's (Redis, Postgres, scheduler and router processes). The runtime
is one meshserve does not ship: stand-in pods in this process, each a puller speaking the
real `meshserve.v1.ModelRuntime` protocol (loads are instant) and a grpc.aio "model server"
with one generic handler that serves any method and records what arrives. The pods join
the scheduler as real pullers do (`ReportPod` heartbeats), so placement, EnsureLoaded, the
route stream and the router's forwarding are all the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import pytest

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack
from meshserve.common.proto.meshserve.v1 import runtime_pb2 as rt
from meshserve.common.proto.meshserve.v1 import runtime_pb2_grpc as rtg
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as pbg
from meshserve.router.wire import encode_varint

pytestmark = pytest.mark.integration
PREDICT = "/tensorflow.serving.PredictionService/Predict"
T = TypeVar("T")


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand."""
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


@dataclass
class Received:
    method: str
    messages: list[bytes]
    metadata: dict[str, str | bytes]


@dataclass
class StandInPod(rtg.ModelRuntimeServicer):
    pod_id: str
    runtime: str
    scheduler_address: str
    loaded: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    calls: list[Received] = field(default_factory=list)
    servers: list[grpc.aio.Server] = field(default_factory=list)
    grpc_address: str = ""
    management_address: str = ""
    _heartbeat: asyncio.Task[None] | None = None

    # -- the puller ------------------------------------------------------------------------
    async def LoadModel(self, request: rt.LoadModelRequest, context: grpc.aio.ServicerContext) -> rt.LoadModelResponse:
        self.loads.append(request.model_id)
        self.loaded.add(request.model_id)
        return rt.LoadModelResponse(size_in_bytes=4096, measured=True)

    async def UnloadModel(self, request: rt.UnloadModelRequest, context: grpc.aio.ServicerContext) -> rt.UnloadModelResponse:
        self.loaded.discard(request.model_id)
        return rt.UnloadModelResponse()

    async def PredictModelSize(self, request: rt.PredictModelSizeRequest, context: grpc.aio.ServicerContext) -> rt.PredictModelSizeResponse:
        return rt.PredictModelSizeResponse(size_in_bytes=4096)

    async def ModelSize(self, request: rt.ModelSizeRequest, context: grpc.aio.ServicerContext) -> rt.ModelSizeResponse:
        return rt.ModelSizeResponse(size_in_bytes=4096)

    async def RuntimeStatus(self, request: rt.RuntimeStatusRequest, context: grpc.aio.ServicerContext) -> rt.RuntimeStatusResponse:
        return rt.RuntimeStatusResponse(
            status=rt.RuntimeStatusResponse.READY, capacity_in_bytes=1 << 30, loaded_model_ids=sorted(self.loaded)
        )

    # -- the model server ------------------------------------------------------------------
    async def serve(self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        call = Received(method, [], dict(context.invocation_metadata() or ()))
        self.calls.append(call)
        model = call.metadata.get("mm-model-id")
        if model not in self.loaded:  # what a model server says about a model it does not have
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {model!r} not found")
        if method.endswith("/Chat"):
            async for message in requests:
                call.messages.append(message)
                yield f"{self.pod_id}:".encode() + message
            return
        async for message in requests:
            call.messages.append(message)
        context.set_trailing_metadata((("x-served-by", self.pod_id),))
        body = b"".join(call.messages)
        yield body[::-1] if method.endswith("/Reverse") else body

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        puller = grpc.aio.server()
        rtg.add_ModelRuntimeServicer_to_server(self, puller)
        self.management_address = f"127.0.0.1:{puller.add_insecure_port('127.0.0.1:0')}"
        model_server = grpc.aio.server()
        model_server.add_generic_rpc_handlers((_Generic(self),))
        self.grpc_address = f"127.0.0.1:{model_server.add_insecure_port('127.0.0.1:0')}"
        for server in (puller, model_server):
            await server.start()
            self.servers.append(server)
        async with grpc.aio.insecure_channel(self.scheduler_address) as channel:
            reply = await pbg.SchedulerStub(channel).ReportPod(self._report(), timeout=10)
        self._heartbeat = asyncio.create_task(self._beat(reply.heartbeat_interval_ms / 1000 or 1.0))

    def _report(self, *, leaving: bool = False) -> pb.PodReport:
        return pb.PodReport(
            pod_id=self.pod_id, runtime=self.runtime, labels=[f"rt:{self.runtime}"],
            management_address=self.management_address, grpc_address=self.grpc_address,
            capacity_bytes=1 << 30, max_loading_concurrency=1, default_model_size_bytes=4096,
            loaded_model_ids=sorted(self.loaded), started_at_ms=int(time.time() * 1000), leaving=leaving,
        )

    async def _beat(self, interval: float) -> None:
        async with grpc.aio.insecure_channel(self.scheduler_address) as channel:
            stub = pbg.SchedulerStub(channel)
            while True:
                await asyncio.sleep(interval)  # the heartbeat protocol's period, not a wait for anything
                await stub.ReportPod(self._report(), timeout=5)

    async def stop(self, *, leave: bool = True) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        for server in self.servers:
            await server.stop(grace=None)
        self.servers.clear()
        if leave:
            async with grpc.aio.insecure_channel(self.scheduler_address) as channel:
                await pbg.SchedulerStub(channel).ReportPod(self._report(leaving=True), timeout=10)


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, pod: StandInPod) -> None:
        self.pod = pod

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method  # type: ignore[attr-defined]

        async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async for reply in self.pod.serve(method, requests, context):
                yield reply

        return grpc.stream_stream_rpc_method_handler(handler)


@dataclass
class Runtime:
    name: str
    pods: list[StandInPod]
    router: grpc.aio.Channel

    def holding(self, model_id: str) -> list[StandInPod]:
        return [p for p in self.pods if model_id in p.loaded]


@pytest.fixture
async def acme(stack: Stack, unique: str) -> AsyncIterator[Runtime]:
    """Two stand-in pods of runtime `acme-<unique>`, and a channel to the router."""
    name = f"acme-{unique}"
    pods = [StandInPod(f"{name}-{i}", name, stack.scheduler_grpc) for i in range(2)]
    for pod in pods:
        await pod.start()
    try:
        async with grpc.aio.insecure_channel(stack.router_grpc) as channel:
            yield Runtime(name, pods, channel)
    finally:
        for pod in pods:
            await pod.stop(leave=bool(pod.servers))


async def register(stack: Stack, model_id: str, runtime: str) -> None:
    # in a thread: the scheduler may call the stand-in pullers, which answer on this loop
    reply = await asyncio.to_thread(
        stack.register, model_id, storage_uri=f"s3://{EXAMPLE_BUCKET}/acme/{model_id}", format="acme", runtime=runtime
    )
    assert reply.status_code == 201, reply.text


async def eventually(call: Callable[[], Awaitable[T]], *, within: float = 30) -> T:
    """`call()` until it stops failing with NOT_FOUND (a route not pushed to the router yet)."""
    deadline, delay = time.monotonic() + within, 0.05
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay)  # polling against a deadline
        delay = min(delay * 2, 0.5)


async def test_a_custom_method_by_model_id_is_loaded_on_a_miss_and_forwarded_byte_for_byte(
    stack: Stack, acme: Runtime, unique: str
) -> None:
    model = f"acme-model-{unique}"
    await register(stack, model, acme.name)
    body = ld(1, b"anything") + b"\x10\x2a"
    call = acme.router.unary_unary("/acme.v1.Scaler/Reverse")(
        body, metadata=(("mm-model-id", model), ("x-request-id", "r-1")), timeout=60
    )
    assert await call == body[::-1]
    [pod] = acme.holding(model)
    assert pod.loads == [model]
    assert tuple(await call.trailing_metadata()) == (("x-served-by", pod.pod_id),)
    [received] = pod.calls
    assert received.method == "/acme.v1.Scaler/Reverse" and received.messages == [body]
    assert received.metadata["mm-model-id"] == model and received.metadata["x-request-id"] == "r-1"


async def test_tf_serving_predict_by_vmodel_name_in_the_body_reaches_the_model_id(
    stack: Stack, acme: Runtime, unique: str
) -> None:
    model, vmodel = f"acme-model-{unique}", f"acme-vm-{unique}"
    await register(stack, model, acme.name)
    put = await asyncio.to_thread(stack.admin, "PUT", f"/v1/vmodels/{vmodel}", json={"targetModelId": model, "owner": "test"})
    assert put.status_code == 200, put.text
    tensors = ld(2, ld(1, b"x") + ld(2, b"\x08\x01" + ld(4, b"\x00" * 16)))
    body = ld(1, ld(1, vmodel.encode()) + ld(3, b"serving_default")) + tensors
    reply = await eventually(lambda: acme.router.unary_unary(PREDICT)(body, timeout=60))
    assert reply == ld(1, ld(1, model.encode()) + ld(3, b"serving_default")) + tensors  # the pod echoes
    # and by the vmodel header, on a method the router knows nothing about, as a bidi stream
    chat = acme.router.stream_stream("/acme.v1.Scaler/Chat")(metadata=(("mm-vmodel-id", vmodel),), timeout=60)
    await chat.write(b"a")
    [pod] = acme.holding(model)
    assert await chat.read() == f"{pod.pod_id}:a".encode()
    await chat.done_writing()
    assert await chat.read() == grpc.aio.EOF
    assert pod.calls[-1].metadata["mm-model-id"] == model and "mm-vmodel-id" not in pod.calls[-1].metadata


async def test_when_the_pod_of_the_copy_dies_the_next_call_is_answered_from_another_pod(
    stack: Stack, acme: Runtime, unique: str
) -> None:
    model = f"acme-model-{unique}"
    await register(stack, model, acme.name)
    reverse = acme.router.unary_unary("/acme.v1.Scaler/Reverse")
    headers = (("mm-model-id", model),)
    assert await reverse(b"one", metadata=headers, timeout=60) == b"eno"
    [first] = acme.holding(model)
    await first.stop(leave=False)  # gone without a word: connections refused, no heartbeat
    assert await reverse(b"two", metadata=headers, timeout=60) == b"owt"
    [second] = [p for p in acme.holding(model) if p is not first]
    assert second.calls[-1].messages == [b"two"]


async def test_refusals_through_the_router_process(stack: Stack, acme: Runtime, unique: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await acme.router.unary_unary("/acme.v1.Scaler/Reverse")(b"x", timeout=30)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "mm-vmodel-id" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await acme.router.unary_unary("/acme.v1.Scaler/Reverse")(
            b"x", metadata=(("mm-vmodel-id", f"no-such-{unique}"),), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"no-such-{unique}" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await acme.router.unary_unary("/inference.model_repository.ModelRepositoryService/RepositoryModelUnload")(
            b"", metadata=(("mm-model-id", f"no-such-{unique}"),), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert all(not p.calls for p in acme.pods)
