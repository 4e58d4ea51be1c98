"""ExceptionToStatusInterceptor on a real grpc.aio server: every method kind maps errors the
same way as the HTTP handler, unknown errors never leak, and the server keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from meshserve.common.errors import NotFound, ResourceExhausted, Unavailable
from meshserve.common.grpcutil import ExceptionToStatusInterceptor, register_error_translator


class _Boom(Exception):
    pass


class _Outage(Exception):
    pass


register_error_translator(lambda err: Unavailable("store is down") if isinstance(err, _Outage) else None)


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"missing":
        raise NotFound("model 'x' is not registered; apply a Predictor first")
    if request == b"outage":
        raise _Outage()
    if request == b"boom":
        raise _Boom("secret internals")
    if request == b"abort":
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
    return request


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    raise ResourceExhausted("too big for any pod")


async def client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    async for _ in requests:
        raise _Boom("secret")
    return b""


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    handler = grpc.method_handlers_generic_handler(
        "t.T",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Upload": grpc.stream_unary_rpc_method_handler(client_stream),
        },
    )
    server = grpc.aio.server(interceptors=[ExceptionToStatusInterceptor()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


@pytest.mark.parametrize(
    ("payload", "code", "text"),
    [
        pytest.param(b"missing", grpc.StatusCode.NOT_FOUND, "model 'x' is not registered; apply a Predictor first", id="ours"),
        pytest.param(b"outage", grpc.StatusCode.UNAVAILABLE, "store is down", id="translated"),
        pytest.param(b"boom", grpc.StatusCode.INTERNAL, "internal error in Unary; see server log", id="unknown"),
        pytest.param(b"abort", grpc.StatusCode.PERMISSION_DENIED, "no", id="own-abort"),
    ],
)
async def test_unary_errors_map_to_statuses(
    channel: grpc.aio.Channel, payload: bytes, code: grpc.StatusCode, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary("/t.T/Unary")(payload, timeout=5)
    assert (err.value.code(), err.value.details()) == (code, text)
    assert "secret internals" not in (err.value.details() or "")
    assert await channel.unary_unary("/t.T/Unary")(b"ok", timeout=5) == b"ok"  # still serving


async def test_unknown_errors_are_logged_with_the_method_and_traceback(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary("/t.T/Unary")(b"boom", timeout=5)
    record = next(r for r in caplog.records if r.name == "meshserve.common.grpcutil")
    assert record.getMessage() == "unexpected error in T.Unary"
    assert record.exc_info is not None and isinstance(record.exc_info[1], _Boom)


async def test_server_streams_map_after_items(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream("/t.T/Stream")(b"", timeout=5)
    assert await call.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too big for any pod")


async def test_client_streams_map_too(channel: grpc.aio.Channel) -> None:
    async def requests() -> AsyncIterator[bytes]:
        yield b"x"

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.stream_unary("/t.T/Upload")(requests(), timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
