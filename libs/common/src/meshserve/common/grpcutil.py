"""gRPC helpers shared by every service: TLS-aware servers and channels, error mapping.

Owns the one mapping from exceptions to gRPC statuses, applied by `ExceptionToStatusInterceptor`
(a `grpc.aio` server interceptor: `grpc.aio.server(interceptors=[ExceptionToStatusInterceptor()])`)
or, for one service on a server whose other calls must not pass through an interceptor (the
router's data path), by registering that service with `add_guarded`. Both wrap each method the
same way (`guard_handler`) and go through `status_for`: a `MeshError` (see `meshserve.common.errors`) is sent
with the status it names and its message; an exception a service registered a translator for
(`register_error_translator`, e.g. a Redis outage -> Unavailable) likewise; anything else is
INTERNAL with a fixed text, logged with its traceback and never sent to the client, so no bad
request can take a server down.

May import grpc, `meshserve.common.errors` and `meshserve.common.settings`; nothing of a service.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

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
    """A PEM file's bytes; an unreadable file is named in the error (never its contents)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise ValueError(f"TLS file {path} cannot be read: {err.strerror or err}") from None


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
    """Bind `address` (port 0 picks a free one) with or without TLS; return the port.

    With `tls.ca_file` the server requires a client certificate signed by it (mutual TLS); a
    `tls` with a CA but no certificate is refused rather than served in plaintext."""
    if tls is not None and tls.enabled and tls.cert_file is None:
        raise ValueError(f"server TLS on {address} has ca_file but no cert_file/key_file: a TLS server needs its own certificate")
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
    """A channel to `address`: TLS when `tls` has a CA or a certificate (presented for mutual
    TLS), checking the server's name against `tls.server_name` when set; else plaintext."""
    opts = [*KEEPALIVE_OPTIONS, *options]
    if tls is not None and tls.enabled:
        if tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
        return grpc.aio.secure_channel(address, channel_credentials(tls), options=opts)
    return grpc.aio.insecure_channel(address, options=opts)



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


def status_for(err: BaseException, *, where: str) -> tuple[grpc.StatusCode, str]:
    """The status and message an RPC that raised `err` ends with; unknown errors are logged
    (with `where`, the method, and the traceback) and become INTERNAL with a fixed text."""
    mapped = err if isinstance(err, MeshError) else translate(err)
    if mapped is not None:
        return grpc_code(mapped), mapped.message
    log.error("unexpected error in %s", where, exc_info=err)
    return grpc.StatusCode.INTERNAL, f"internal error in {where.rsplit('.', 1)[-1]}; see server log"


def _method_name(full: str) -> str:
    """'/pkg.Service/Method' -> 'Service.Method' (what a log line and a client message name)."""
    service, _, method = full.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}.{method}" if service else method


class ExceptionToStatusInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps what a servicer method raises to a status (`status_for`), for every method of the
    server it is installed on: unary and streaming, async functions and async generators.

    `grpc.aio.AbortError` (a method that called `context.abort` itself) passes through.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return guard_handler(handler, _method_name(handler_call_details.method))


def guard_handler(handler: grpc.RpcMethodHandler, where: str) -> grpc.RpcMethodHandler:
    """`handler` with what its behaviour raises turned into the status it maps to."""
    if handler.unary_unary is not None:
        factory, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    elif handler.unary_stream is not None:
        factory, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    elif handler.stream_unary is not None:
        factory, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    else:
        factory, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    return factory(
        _guard(behavior, where),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _GuardedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else guard_handler(handler, _method_name(handler_call_details.method))


class _GuardingServer:
    """What a generated `add_XServicer_to_server` calls, forwarded with every handler guarded."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGeneric(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        short = service.rsplit(".", 1)[-1]
        self._server.add_registered_method_handlers(
            service, {method: guard_handler(h, f"{short}.{method}") for method, h in handlers.items()}
        )


def add_guarded(add: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """`add(servicer, server)` (a generated `add_XServicer_to_server`) with every method of that
    service mapping its errors as `ExceptionToStatusInterceptor` would, and nothing else on the
    server paying for it."""
    add(servicer, _GuardingServer(server))


def _guard(behavior: Callable[..., Any], where: str) -> Callable[..., Any]:
    """`behavior` with its exceptions turned into the status they map to."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await context.abort(*status_for(err, where=where))

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            await context.abort(*status_for(err, where=where))

    return unary
