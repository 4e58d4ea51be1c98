"""gRPC helpers shared by every service: TLS-aware servers and channels, error mapping.

Servicer methods are wrapped with `@rpc_errors`, which turns a `MeshError` into the
matching status with its message and any other exception into INTERNAL (logged with
its traceback, never sent to the client), so no bad request can take a server down.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from meshserve.common.errors import MeshError
from meshserve.common.settings import TLSSettings

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    # accept the pings our clients send (KEEPALIVE_OPTIONS: every 30 s, also on idle channels);
    # gRPC's server default allows one per 5 min without calls and answers more with
    # GOAWAY too_many_pings, which tears the connection down under calls in flight
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),   # the least time between received pings
]


def message_size_options(max_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
    ]


def _read(path: Any) -> bytes | None:
    return None if path is None else open(path, "rb").read()


def server_credentials(tls: TLSSettings) -> grpc.ServerCredentials:
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("server TLS needs both cert_file and key_file")
    key, cert = _read(tls.key_file), _read(tls.cert_file)
    assert key is not None and cert is not None
    ca = _read(tls.ca_file)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def channel_credentials(tls: TLSSettings) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


def bind(server: grpc.aio.Server, address: str, tls: TLSSettings | None = None) -> int:
    """Bind `address` (port 0 picks a free one) with or without TLS; return the port."""
    if tls is not None and tls.cert_file is not None:
        port = server.add_secure_port(address, server_credentials(tls))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    return int(port)


def open_channel(
    address: str,
    *,
    tls: TLSSettings | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    opts = [*KEEPALIVE_OPTIONS, *options]
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(address, channel_credentials(tls), options=opts)
    return grpc.aio.insecure_channel(address, options=opts)


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# service-specific exception -> MeshError translators (e.g. a Redis outage -> Unavailable)
_TRANSLATORS: list[Callable[[BaseException], MeshError | None]] = []


def register_error_translator(fn: Callable[[BaseException], MeshError | None]) -> None:
    _TRANSLATORS.append(fn)


def translate(err: BaseException) -> MeshError | None:
    for fn in _TRANSLATORS:
        mapped = fn(err)
        if mapped is not None:
            return mapped
    return None


def grpc_code(err: MeshError) -> grpc.StatusCode:
    """The gRPC status an error is sent with."""
    return grpc.StatusCode[err.status]


async def _abort(err: Exception, context: grpc.aio.ServicerContext, fn: Callable[..., Any]) -> None:
    """Abort the RPC with the status `err` maps to; unknown errors are logged, INTERNAL."""
    mapped = err if isinstance(err, MeshError) else translate(err)
    if mapped is not None:
        await context.abort(grpc_code(mapped), mapped.message)
    log.exception("unexpected error in %s", fn.__qualname__)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}; see server log")


def rpc_errors(fn: F) -> F:
    """Map exceptions raised by a grpc.aio servicer method to statuses."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            await _abort(err, context, fn)

    return wrapper  # type: ignore[return-value]


def rpc_stream_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Same as rpc_errors for server-streaming methods (async generators)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            await _abort(err, context, fn)

    return wrapper
