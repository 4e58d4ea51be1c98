"""add_guarded maps one service's errors to statuses on a real grpc.aio server, as the
interceptor does for a whole server; nothing crashes it, and the server's other services are left
as they are."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from meshserve.common.errors import NotFound, Unavailable
from meshserve.common.grpcutil import add_guarded, register_error_translator


class _Boom(Exception):
    pass


class _Translated(Exception):
    pass


register_error_translator(lambda err: Unavailable("translated") if isinstance(err, _Translated) else None)


class Servicer:
    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"missing":
            raise NotFound("model 'x' not found")
        if request == b"translated":
            raise _Translated()
        if request == b"boom":
            raise _Boom("secret internals")
        return request

    async def stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"first"
        raise NotFound("gone mid-stream")


def add_servicer(servicer: Servicer, server: grpc.aio.Server) -> None:
    """What a generated `add_XServicer_to_server` does (grpcio-tools 1.6x): both registrations."""
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(servicer.unary),
        "Stream": grpc.unary_stream_rpc_method_handler(servicer.stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    server.add_registered_method_handlers("t.T", handlers)


async def _unguarded(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise NotFound("not mapped here")


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    add_guarded(add_servicer, Servicer(), server)
    other = {"Unary": grpc.unary_unary_rpc_method_handler(_unguarded)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Other", other),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


@pytest.mark.parametrize(
    ("payload", "code", "text"),
    [
        (b"missing", grpc.StatusCode.NOT_FOUND, "model 'x' not found"),
        (b"translated", grpc.StatusCode.UNAVAILABLE, "translated"),
        (b"boom", grpc.StatusCode.INTERNAL, "internal error in Unary; see server log"),
    ],
)
async def test_errors_map_to_statuses(channel: grpc.aio.Channel, payload: bytes, code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary("/t.T/Unary")(payload, timeout=5)
    assert err.value.code() == code
    assert err.value.details() == text  # internals never leak to the client
    assert await channel.unary_unary("/t.T/Unary")(b"ok", timeout=5) == b"ok"  # still serving


async def test_stream_errors_map_after_items(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream("/t.T/Stream")(b"", timeout=5)
    assert await call.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_other_services_on_the_server_are_not_guarded(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary("/t.Other/Unary")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNKNOWN   # grpc's own answer to an unmapped raise
