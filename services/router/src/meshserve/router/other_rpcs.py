"""Any other gRPC API a runtime serves, forwarded by the router (upstream's `allowOtherRpcs`).

`OtherRpcHandler` sits after the KServe v2 handler (server.py) in the router's gRPC server
and gets every method that handler does not serve. A call is forwarded to a copy of a model
when it names the model:

- in the `mm-vmodel-id` / `mm-model-id` header (or their `-bin` forms): any method; or
- inside its body, for a method in the router's id-path table (`RouterSettings.id_paths`,
  by default upstream's: TF Serving `Predict` at `[1, 1]`, TorchServe `Predictions` at `[1]`).
  A header wins over the body, as on the v2 path.

The model is resolved exactly as a v2 inference is (dataplane.py): vmodel -> model id, a
loaded copy picked by least-request, `EnsureLoaded` on a miss (concurrent misses share one),
in-flight counted per copy, another copy tried when the chosen one is gone (connection
refused, UNAVAILABLE, "model not found"). For a method in the table, the model name in
every request message is rewritten to the concrete model id (inject.py); any other method's
bytes pass untouched. The pod receives the client's metadata minus pseudo and hop-by-hop
headers and the id headers, plus `mm-model-id: <model id>` (as upstream sets it), and what
is left of the client's deadline (capped by `default_timeout_seconds`, as v2 calls are).
The pod's initial metadata, response messages, trailing metadata, status code and details
come back unchanged.

Cardinality: the handler is stream-stream for every method, which serves unary, server-,
client- and bidi-streaming clients alike (on the wire they differ only in how many
messages each side sends). Upstream rejects streaming; meshserve forwards it. A method in
the table has its first request read before a copy is chosen (its name may be there);
for any other method nothing is read ahead, so a bidi stream where the server speaks
first works.

Retry. The requests sent to a copy are kept (up to `max_message_bytes`) until the first
response comes back; if the copy turns out to be gone before that, they are replayed to
another copy and the client sees nothing of the first. After a response has been relayed,
or past the limit, a failure is the client's status. Like ModelMesh, this assumes the
model methods are idempotent.

Refused: a method matching `blocked_methods` (model-repository and other management APIs
of the model servers, our internal services) and, without an id header, a method not in
the table: UNIMPLEMENTED, saying which header to send.

Owns: `OtherRpcHandler`, `MethodTable`, the metadata split (`split_metadata`).
May import: the data plane, the upstream gRPC client and errors, the replayable request
stream, inject, wire, metrics, v2 names; never the KServe v2 door, the REST door or the app.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence

import grpc

from meshserve.common.errors import InvalidArgument, MeshError, NotFound
from meshserve.common.grpcutil import grpc_code, status_for, translate
from meshserve.router import inject, metrics
from meshserve.router.dataplane import DataPlane
from meshserve.router.replay import ReplayableRequests
from meshserve.router.table import Endpoint
from meshserve.router.upstream import GrpcUpstream, copy_gone
from meshserve.router.upstream_errors import CopyGone
from meshserve.router.v2 import ROUTING_HEADERS
from meshserve.router.wire import WireError

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]

# never forwarded: HTTP/2 connection-level headers (grpc refuses most of them anyway)
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "host", "content-type"}
)


class MethodTable:
    """Which methods are forwarded, and where their request names the model. No I/O.

    Args:
        id_paths: "package.Service/Method" -> field path of the model name ([] = none).
        allow_other_rpcs: forward methods not in `id_paths` (they need an id header).
        blocked: method-name prefixes never forwarded.
    """

    def __init__(
        self, *, id_paths: Mapping[str, Sequence[int]], allow_other_rpcs: bool = True, blocked: Iterable[str] = ()
    ) -> None:
        self.id_paths = {name.lstrip("/"): inject.check_path(p) if p else () for name, p in id_paths.items()}
        self.allow_other_rpcs = allow_other_rpcs
        self.blocked = tuple(prefix.lstrip("/") for prefix in blocked)

    def refusal(self, name: str, *, has_header: bool) -> str | None:
        """Why method `name` (without the leading slash) is not forwarded, or None."""
        if any(name.startswith(prefix) for prefix in self.blocked):
            return (
                f"method {name} is not permitted through the router: it manages the model server "
                "(models are loaded and unloaded through the scheduler)"
            )
        known = name in self.id_paths
        if not known and not self.allow_other_rpcs:
            return (
                f"method {name} is not permitted: the router forwards only the methods in its "
                "id_paths setting (allow_other_rpcs is off)"
            )
        if not has_header and not self.id_paths.get(name):
            return (
                f"method {name} is not served by the router itself; to have it forwarded to a copy "
                "of a model, name the model in the mm-vmodel-id header (or its model id in mm-model-id)"
            )
        return None

    def path(self, name: str) -> tuple[int, ...]:
        """Where the request of `name` names the model; () when it is not known to."""
        return tuple(self.id_paths.get(name, ()))


def split_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[Metadata, Metadata]:
    """(id headers, headers to forward): pseudo and hop-by-hop headers are dropped."""
    routing: list[tuple[str, str | bytes]] = []
    forwarded: list[tuple[str, str | bytes]] = []
    for key, value in metadata:
        if key in ROUTING_HEADERS:
            routing.append((key, value))
        elif key and key[0] != ":" and key not in HOP_BY_HOP:
            forwarded.append((key, value))
    return tuple(routing), tuple(forwarded)


def _relayable(metadata: Iterable[tuple[str, str | bytes]] | None) -> Metadata:
    """The pod's metadata the router may set on its own reply (no reserved keys)."""
    return tuple((k, v) for k, v in (metadata or ()) if k and k[0] != ":" and not k.startswith("grpc-"))


class _Relayed(Exception):
    """The pod ended the call with a status that goes back to the client as it is."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details, self.trailing = code, details, trailing


class OtherRpcHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no type hints
    def __init__(self, dataplane: DataPlane, upstream: GrpcUpstream, methods: MethodTable) -> None:
        self.dp = dataplane
        self.upstream = upstream
        self.methods = methods

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method

        async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            await self.relay(method, requests, context)

        return grpc.stream_stream_rpc_method_handler(handler)

    def _budget(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        default = self.dp.settings.default_timeout_seconds
        return default if remaining is None else max(0.0, min(remaining, default))

    async def relay(self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        name = method.lstrip("/")
        path = self.methods.path(name)
        label = name if name in self.methods.id_paths else "other"
        started = time.perf_counter()
        model_id, code = "", "OK"
        source: ReplayableRequests | None = None
        metrics.IN_FLIGHT.inc()
        try:
            routing, forwarded = split_metadata(context.invocation_metadata() or ())
            refusal = self.methods.refusal(name, has_header=bool(routing))
            if refusal is not None:
                code = grpc.StatusCode.UNIMPLEMENTED.name
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, refusal)
            # the request stream is touched only when read: grpc warns about one made and never awaited
            first: bytes | None = None
            body_name: str | None = None
            if path:
                first = await anext(aiter(requests), None)
                if first is not None:
                    body_name = inject.read_path(first, path) if not routing else None
            model_id = self._resolve(name, path, body_name, routing)
            rewrite = functools.partial(inject.inject, path=path, value=model_id) if path else None
            if rewrite is not None and first is not None:
                first = rewrite(first)
            source = ReplayableRequests(requests, first=first, rewrite=rewrite, limit=self.dp.settings.max_message_bytes)
            outgoing = (*forwarded, ("mm-model-id", model_id))
            await self.dp.call(
                model_id, self._sender(method, source, outgoing, context), budget=self._budget(context),
                balanced=self.dp.balanced(forwarded),
            )
        except grpc.aio.AbortError:
            raise
        except _Relayed as relayed:
            code = relayed.code.name
            await context.abort(relayed.code, relayed.details, trailing_metadata=relayed.trailing)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if source is None or source.error is None or (task is not None and task.cancelling()):
                code = grpc.StatusCode.CANCELLED.name
                raise
            code = grpc.StatusCode.INVALID_ARGUMENT.name
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} request: {source.error}")
        except Exception as err:
            status, message = _status_for(name, err)
            code = status.name
            await context.abort(status, message)
        finally:
            if source is not None:
                source.close()
            metrics.IN_FLIGHT.dec()
            metrics.observe_request(
                model=model_id, protocol="grpc", method=label, code=code, seconds=time.perf_counter() - started
            )

    def _resolve(
        self, name: str, path: tuple[int, ...], body_name: str | None, routing: Metadata
    ) -> str:
        if not routing and not body_name:
            raise InvalidArgument(
                f"the {name} request names no model: set the model name at field path {list(path)} "
                "or send the mm-vmodel-id header"
            )
        return self.dp.resolve(body_name, routing)

    def _sender(
        self, method: str, source: ReplayableRequests, metadata: Metadata, context: grpc.aio.ServicerContext
    ) -> Callable[[Endpoint, float], Awaitable[None]]:
        upstream = self.upstream

        async def send(endpoint: Endpoint, budget: float) -> None:
            call = upstream.stream_callable(endpoint.grpc_address, method)(
                source.stream(), metadata=metadata, timeout=budget
            )
            relayed = False
            try:
                try:
                    async for reply in call:
                        if not relayed:
                            source.commit()
                            relayed = True
                            initial = _relayable(await call.initial_metadata())
                            if initial:
                                await context.send_initial_metadata(initial)
                        await context.write(reply)
                except grpc.aio.AioRpcError as err:
                    code, details = err.code(), err.details() or ""
                    if source.error is not None:
                        raise InvalidArgument(f"malformed {method.lstrip('/')} request: {source.error}") from err
                    if not relayed and source.replayable and copy_gone(code, details):
                        raise CopyGone(f"{code.name}: {details}") from err
                    if not relayed:
                        initial = _relayable(err.initial_metadata())
                        if initial:
                            await context.send_initial_metadata(initial)
                    raise _Relayed(code, details, _relayable(err.trailing_metadata())) from err
                if not relayed:  # OK without a response message (a stream may do that)
                    initial = _relayable(await call.initial_metadata())
                    if initial:
                        await context.send_initial_metadata(initial)
                context.set_trailing_metadata(_relayable(await call.trailing_metadata()))
            finally:
                if not call.done():
                    call.cancel()

        return send


def _status_for(name: str, err: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a failed `name` call ends with: our own errors as they say
    (NOT_FOUND with what to do), a malformed request as INVALID_ARGUMENT, anything else as
    INTERNAL (logged)."""
    if isinstance(err, NotFound):
        return grpc_code(err), (
            f"{err.message}: no model, InferenceService or Predictor has that name; check the "
            "mm-vmodel-id / mm-model-id header (or the name in the request), or apply the model first"
        )
    if isinstance(err, MeshError) or translate(err) is not None:
        return status_for(err, where=name)  # the one mapping; the router's own texts below
    if isinstance(err, WireError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} request: {err}"
    log.exception("unexpected error forwarding %s", name)
    return grpc.StatusCode.INTERNAL, "internal router error; see the router log"


__all__ = ["MethodTable", "OtherRpcHandler", "split_metadata"]
