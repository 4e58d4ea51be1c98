"""Other gRPC APIs through the router (other_rpcs.py), all over real sockets on port 0.

The router is the real one: `RouterApp`'s gRPC handlers (KServe v2 first, then the
other-RPC handler), data plane, routing table and upstream channels. Stand-ins: a gRPC
scheduler that answers `EnsureLoaded` (the model ids it holds are "registered"; a call
naming a suspect pod gets the next pod in its list, as the real one places a new copy),
and model servers: grpc.aio servers with one generic handler serving arbitrary methods and
recording what arrives (method, bytes, metadata, deadline). Tests assert on what the
client gets and what the model servers received, never on the stand-ins' bookkeeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as pbg
from meshserve.router.app import RouterApp
from meshserve.router.settings import RouterSettings
from meshserve.router.wire import encode_varint

MODEL = "vm__isvc-0123456789"
VMODEL = "vm"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
TORCH = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field, written by hand (independent of the code under test)."""
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


# -- stand-in model server ----------------------------------------------------------------
@dataclass
class Received:
    method: str
    messages: list[bytes]
    metadata: dict[str, str | bytes]
    time_remaining: float | None


@dataclass
class ModelServer:
    pod_id: str
    calls: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    address: str = ""

    async def handle(self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        call = Received(method, [], dict(context.invocation_metadata() or ()), context.time_remaining())
        self.calls.append(call)
        name = method.rsplit("/", 1)[1]
        if name == "Hello":  # speaks first
            yield f"hello from {self.pod_id}".encode()
        if name == "Chat":  # one reply per request, as it comes
            async for message in requests:
                call.messages.append(message)
                yield f"{self.pod_id}:".encode() + message
            return
        if name == "Count":
            n = int(await anext(aiter(requests)))
            for i in range(n):
                yield str(i).encode()
            return
        async for message in requests:
            call.messages.append(message)
        if name == "Fail":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the pod says no", trailing_metadata=(("x-why", "because"),))
        if name == "OneThenUnavailable":
            yield b"one"
            await context.abort(grpc.StatusCode.UNAVAILABLE, "pod went away mid-stream")
        if name == "Wait":
            self.arrived.set()
            await self.release.wait()
        if name != "Hello":
            await context.send_initial_metadata((("x-pod", self.pod_id),))
        context.set_trailing_metadata((("x-trail", "t-" + self.pod_id), ("x-trail-bin", b"\x00\xff")))
        yield b"".join(call.messages) if name != "Reverse" else b"".join(call.messages)[::-1]


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method  # type: ignore[attr-defined]

        async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async for reply in self.server.handle(method, requests, context):
                yield reply

        return grpc.stream_stream_rpc_method_handler(handler)


# -- stand-in scheduler -------------------------------------------------------------------
class Scheduler(pbg.SchedulerServicer):
    """`models`: model id -> endpoints, first the current copy, then where a new one goes."""

    def __init__(self) -> None:
        self.models: dict[str, list[pb.Endpoint]] = {}

    async def EnsureLoaded(self, request: pb.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> pb.EnsureLoadedResponse:
        endpoints = self.models.get(request.model_id)
        if endpoints is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_id!r} not found")
        live = [e for e in endpoints if e.pod_id not in request.suspect_pods]
        return pb.EnsureLoadedResponse(endpoints=live[:1])


@dataclass
class Router:
    app: RouterApp
    channel: grpc.aio.Channel
    pods: dict[str, ModelServer]
    scheduler: Scheduler

    def unary(self, method: str) -> Any:
        return self.channel.unary_unary(method)

    def bidi(self, method: str) -> Any:
        return self.channel.stream_stream(method)


async def _serve(handler: grpc.GenericRpcHandler | None = None, servicer: Scheduler | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    if handler is not None:
        server.add_generic_rpc_handlers((handler,))
    if servicer is not None:
        pbg.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _dead_address() -> str:
    """An address nothing listens on (bound and closed: the kernel refuses connections)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def router_settings() -> dict[str, Any]:
    return {}


@pytest.fixture
async def router(router_settings: dict[str, Any]) -> AsyncIterator[Router]:
    servers: list[grpc.aio.Server] = []
    pods = {pod_id: ModelServer(pod_id) for pod_id in ("pod-1", "pod-2")}
    for pod in pods.values():
        server, port = await _serve(handler=_Generic(pod))
        servers.append(server)
        pod.address = f"127.0.0.1:{port}"
    scheduler = Scheduler()
    scheduler.models[MODEL] = [pb.Endpoint(pod_id="pod-1", grpc_address=pods["pod-1"].address)]
    sched_server, sched_port = await _serve(servicer=scheduler)
    servers.append(sched_server)
    settings = RouterSettings(
        scheduler_address=f"127.0.0.1:{sched_port}", default_timeout_seconds=30, **router_settings
    )
    app = RouterApp(settings)
    # what the scheduler's route stream would have pushed: the vmodel, no copy yet
    app.table.apply(pb.RouteUpdate(snapshot=True, vmodels=[pb.VModelRoute(vmodel_id=VMODEL, model_id=MODEL)]), now=app.clock())
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


def only_call(router: Router, pod: str = "pod-1") -> Received:
    [call] = router.pods[pod].calls
    return call


VM_HEADER = (("mm-vmodel-id", VMODEL),)


# -- header routing, any method -----------------------------------------------------------
async def test_an_unknown_method_with_a_vmodel_header_reaches_a_copy_byte_for_byte(router: Router) -> None:
    body = ld(1, b"vm") + b"\x10\x07" + ld(9, b"opaque")  # looks like a model name: must stay as it is
    call = router.unary("/acme.Echo/Reverse")(
        body, metadata=(*VM_HEADER, ("x-custom", "c"), ("x-bin-bin", b"\x00\x01"), ("mm-balanced", "true")), timeout=10
    )
    assert await call == body[::-1]
    assert await call.initial_metadata() == (("x-pod", "pod-1"),)
    assert tuple(await call.trailing_metadata()) == (("x-trail", "t-pod-1"), ("x-trail-bin", b"\x00\xff"))
    received = only_call(router)
    assert received.method == "/acme.Echo/Reverse" and received.messages == [body]
    assert received.metadata["mm-model-id"] == MODEL
    assert received.metadata["x-custom"] == "c" and received.metadata["x-bin-bin"] == b"\x00\x01"
    assert received.metadata["mm-balanced"] == "true"
    assert "mm-vmodel-id" not in received.metadata
    # the client's deadline (grpc rounds the grpc-timeout header up a little on each hop)
    assert received.time_remaining is not None and 8 < received.time_remaining <= 10.5


async def test_a_model_id_header_and_no_client_deadline_get_the_routers_budget(router: Router) -> None:
    assert await router.unary("/acme.Echo/Echo")(b"x", metadata=(("mm-model-id", MODEL),)) == b"x"
    received = only_call(router)
    assert received.metadata["mm-model-id"] == MODEL
    assert received.time_remaining is not None and 25 < received.time_remaining <= 31  # default_timeout_seconds


async def test_the_pods_status_details_and_trailers_come_back_unchanged(router: Router) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.unary("/acme.Echo/Fail")(b"x", metadata=VM_HEADER, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "the pod says no"
    assert tuple(err.value.trailing_metadata()) == (("x-why", "because"),)


async def test_v2_methods_the_router_serves_stay_its_own(router: Router) -> None:
    live = await router.unary("/inference.GRPCInferenceService/ServerLive")(
        v2.ServerLiveRequest().SerializeToString(), metadata=(("mm-model-id", MODEL),), timeout=10
    )
    assert v2.ServerLiveResponse.FromString(live).live
    infer = v2.ModelInferRequest(model_name=VMODEL, id="r1")
    reply = await router.unary("/inference.GRPCInferenceService/ModelInfer")(infer.SerializeToString(), timeout=10)
    assert v2.ModelInferRequest.FromString(reply) == v2.ModelInferRequest(model_name=MODEL, id="r1")  # the pod echoes
    # a v2 method the router does not serve itself (Triton's) is forwarded like any other
    stats = ld(1, b"vm")
    assert await router.unary("/inference.GRPCInferenceService/ModelStatistics")(stats, metadata=VM_HEADER, timeout=10) == stats
    assert [c.method for c in router.pods["pod-1"].calls] == [
        "/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelStatistics"
    ]


# -- known methods: the model name in the body ----------------------------------------------
SPEC_REST = ld(3, b"serving_default")
TENSORS = ld(2, ld(1, b"x") + ld(2, b"\x08\x01" + ld(4, b"\x00" * 32)))


@pytest.mark.parametrize("headers", [pytest.param(VM_HEADER, id="vmodel-header"), pytest.param((), id="name-in-body")])
async def test_tf_serving_predict_has_model_spec_name_rewritten_to_the_model_id(router: Router, headers: Any) -> None:
    body = ld(1, ld(1, b"vm") + SPEC_REST) + TENSORS
    assert await router.unary(PREDICT)(body, metadata=headers, timeout=10) == ld(1, ld(1, MODEL.encode()) + SPEC_REST) + TENSORS
    assert only_call(router).metadata["mm-model-id"] == MODEL


async def test_a_header_wins_over_the_name_in_the_body_and_a_missing_spec_is_created(router: Router) -> None:
    body = TENSORS  # no model_spec at all
    assert await router.unary(PREDICT)(body, metadata=(("mm-model-id", MODEL),), timeout=10) == TENSORS + ld(1, ld(1, MODEL.encode()))
    other = ld(1, ld(1, b"some-other-model"))
    assert await router.unary(PREDICT)(other, metadata=VM_HEADER, timeout=10) == ld(1, ld(1, MODEL.encode()))


async def test_torchserve_predictions_by_the_name_in_the_body(router: Router) -> None:
    body = ld(1, b"vm") + ld(3, ld(1, b"data") + ld(2, b"\x01\x02"))
    assert await router.unary(TORCH)(body, timeout=10) == ld(1, MODEL.encode()) + ld(3, ld(1, b"data") + ld(2, b"\x01\x02"))


async def test_a_malformed_known_request_is_invalid_argument_and_reaches_no_pod(router: Router) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.unary(PREDICT)(b"\x08\x01", metadata=VM_HEADER, timeout=10)  # model_spec as a varint
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensorflow.serving.PredictionService/Predict" in (err.value.details() or "")
    assert "must be length-delimited" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.unary(PREDICT)(ld(1, b"\xff"), timeout=10)  # truncated inside model_spec
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert router.pods["pod-1"].calls == []


async def test_a_known_request_without_a_name_or_header_is_invalid_argument(router: Router) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.unary(PREDICT)(TENSORS, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mm-vmodel-id" in (err.value.details() or "") and "[1, 1]" in (err.value.details() or "")


# -- refusals -------------------------------------------------------------------------------
async def test_an_unknown_method_without_a_header_is_unimplemented_and_says_which_header(router: Router) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.unary("/acme.Echo/Reverse")(b"x", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "mm-vmodel-id" in (err.value.details() or "") and "acme.Echo/Reverse" in (err.value.details() or "")
    assert router.pods["pod-1"].calls == []


@pytest.mark.parametrize(
    "method",
    [
        "/inference.model_repository.ModelRepositoryService/RepositoryModelUnload",
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/SystemSharedMemoryRegister",
        "/meshserve.v1.ModelRuntime/UnloadModel",
    ],
)
async def test_model_server_management_methods_are_never_forwarded(router: Router, method: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.unary(method)(b"", metadata=(("mm-model-id", MODEL),), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "not permitted" in (err.value.details() or "")
    assert router.pods["pod-1"].calls == []


async def test_an_unknown_model_is_not_found_with_what_to_do(router: Router) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.unary("/acme.Echo/Echo")(b"x", metadata=(("mm-vmodel-id", "no-such-model"),), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    details = err.value.details() or ""
    assert "no-such-model" in details and "mm-vmodel-id" in details


async def test_both_id_headers_are_invalid_argument(router: Router) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.unary("/acme.Echo/Echo")(b"x", metadata=(*VM_HEADER, ("mm-model-id", MODEL)), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "must include only one of model id and vmodel id"


# -- the table is a setting -------------------------------------------------------------------
@pytest.mark.parametrize("router_settings", [{"id_paths": {"/acme.Named/Call": [2]}}])
async def test_a_configured_method_is_rewritten_where_its_path_says_and_the_default_table_is_replaced(router: Router) -> None:
    body = ld(1, b"keep") + ld(2, b"vm")
    assert await router.unary("/acme.Named/Call")(body, timeout=10) == ld(1, b"keep") + ld(2, MODEL.encode())
    predict = ld(1, ld(1, b"vm"))
    assert await router.unary(PREDICT)(predict, metadata=VM_HEADER, timeout=10) == predict  # no longer known: untouched


@pytest.mark.parametrize("router_settings", [{"allow_other_rpcs": False}])
async def test_without_allow_other_rpcs_only_table_methods_are_forwarded(router: Router) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.unary("/acme.Echo/Echo")(b"x", metadata=VM_HEADER, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert await router.unary(TORCH)(ld(1, b"vm"), timeout=10) == ld(1, MODEL.encode())


# -- copies: in flight, gone, retried ---------------------------------------------------------
async def test_a_call_counts_in_flight_on_its_copy_while_it_runs(router: Router) -> None:
    pod = router.pods["pod-1"]
    call = router.unary("/acme.Echo/Wait")(b"w", metadata=VM_HEADER, timeout=10)
    task = asyncio.ensure_future(call)
    await pod.arrived.wait()
    assert router.app.dataplane.in_flight["pod-1"] == 1
    pod.release.set()
    assert await task == b"w"
    assert router.app.dataplane.in_flight["pod-1"] == 0
    assert router.app.dataplane.usage[MODEL] == 1


def _first_copy_dead(router: Router) -> None:
    router.scheduler.models[MODEL] = [
        pb.Endpoint(pod_id="gone", grpc_address=_dead_address()),
        pb.Endpoint(pod_id="pod-2", grpc_address=router.pods["pod-2"].address),
    ]


async def test_a_copy_that_is_gone_is_replaced_and_the_client_gets_the_answer(router: Router) -> None:
    _first_copy_dead(router)
    assert await router.unary("/acme.Echo/Reverse")(b"abc", metadata=VM_HEADER, timeout=10) == b"cba"
    assert only_call(router, "pod-2").messages == [b"abc"]


async def test_a_stream_is_replayed_to_another_copy_when_the_first_is_gone(router: Router) -> None:
    _first_copy_dead(router)
    call = router.bidi("/acme.Echo/Chat")(metadata=VM_HEADER, timeout=10)
    await call.write(b"a")
    assert await call.read() == b"pod-2:a"
    await call.write(b"b")
    assert await call.read() == b"pod-2:b"
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    assert only_call(router, "pod-2").messages == [b"a", b"b"]


async def test_after_a_reply_was_relayed_a_failure_is_the_clients(router: Router) -> None:
    call = router.channel.unary_stream("/acme.Echo/OneThenUnavailable")(b"x", metadata=VM_HEADER, timeout=10)
    assert await call.read() == b"one"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and err.value.details() == "pod went away mid-stream"
    assert len(router.pods["pod-1"].calls) == 1 and router.pods["pod-2"].calls == []


# -- streaming shapes -------------------------------------------------------------------------
async def test_bidi_replies_interleave_with_requests(router: Router) -> None:
    call = router.bidi("/acme.Echo/Chat")(metadata=VM_HEADER, timeout=10)
    for message in (b"1", b"2", b"3"):
        await call.write(message)
        assert await call.read() == b"pod-1:" + message  # the next is sent only after this reply
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


async def test_a_server_that_speaks_first_is_not_waited_on(router: Router) -> None:
    call = router.bidi("/acme.Echo/Hello")(metadata=VM_HEADER, timeout=10)
    assert await call.read() == b"hello from pod-1"
    await call.write(b"x")
    await call.done_writing()
    assert await call.read() == b"x"


async def test_server_and_client_streaming(router: Router) -> None:
    replies = [r async for r in router.channel.unary_stream("/acme.Echo/Count")(b"3", metadata=VM_HEADER, timeout=10)]
    assert replies == [b"0", b"1", b"2"]
    joined = await router.channel.stream_unary("/acme.Echo/Join")(iter([b"a", b"b", b"c"]), metadata=VM_HEADER, timeout=10)
    assert joined == b"abc"


async def test_every_message_of_a_known_method_stream_is_rewritten_and_a_bad_one_ends_it(router: Router) -> None:
    stream = router.channel.stream_stream(TORCH)  # a unary method upstream; the router does not care
    replies = [r async for r in stream(iter([ld(1, b"vm"), ld(1, b"other")]), metadata=VM_HEADER, timeout=10)]
    assert replies == [ld(1, MODEL.encode()) * 2]
    assert only_call(router).messages == [ld(1, MODEL.encode())] * 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stream(iter([ld(1, b"vm"), b"\x08\x01"]), metadata=VM_HEADER, timeout=10):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be length-delimited" in (err.value.details() or "")

