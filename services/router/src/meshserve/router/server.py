"""gRPC front door (:8033): the KServe v2 `inference.GRPCInferenceService`.

A generic handler receives every request as raw bytes. Server-level RPCs are answered
here; model RPCs have their model-name field read and rewritten in the bytes and are
forwarded through the data plane. Exceptions become statuses; nothing a client sends
can crash the process.

Several models in one request (upstream's multi-model call): id headers naming more than
one model (or vmodel) send a unary model RPC to each, and the replies are concatenated in
header order; `mm-required: any` (default) leaves out those not found, `all` fails on one.

Owns: `InferenceHandler` (the v2 methods: server-level ones answered here, model ones and
ModelStreamInfer sent through the data plane with a `send` of their own), the gRPC
status mapping of the door's errors (`_status_for`) and the length bound on status
messages (`bounded`).
May import: the data plane, the upstream clients and errors, the replayable request
stream, wire, metrics, payloads, v2 names; never the REST door, the other-RPC handler or
the app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc

from meshserve.common.errors import InvalidArgument, MeshError, NotFound, from_grpc
from meshserve.common.grpcutil import status_for, translate
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.router import metrics, payloads, wire
from meshserve.router.dataplane import DataPlane
from meshserve.router.replay import ReplayableRequests
from meshserve.router.table import Endpoint
from meshserve.router.upstream import GrpcUpstream, copy_gone
from meshserve.router.upstream_errors import CopyGone, client_status
from meshserve.router.v2 import (
    MODEL_ID_HEADER,
    MODEL_STREAM_INFER,
    ROUTING_HEADERS,
    SERVICE,
    server_version,
)

log = logging.getLogger(__name__)


class _Call:
    """What the metrics of one call need to know (filled in as the call proceeds)."""

    __slots__ = ("invoke_seconds", "model", "pod", "request_bytes", "response_bytes", "vmodel")

    def __init__(self) -> None:
        self.model = ""
        self.vmodel: str | None = None  # the vmodel the request named
        self.pod: str | None = None  # the pod that answered
        self.invoke_seconds: float | None = None  # the forward to the model server that answered
        self.request_bytes: int | None = None
        self.response_bytes: int | None = None


Method = Callable[[str, bytes, grpc.aio.ServicerContext, _Call], Awaitable[bytes]]
Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class InferenceHandler(grpc.GenericRpcHandler):
    def __init__(self, dataplane: DataPlane, upstream: GrpcUpstream) -> None:
        self.dp = dataplane
        self.upstream = upstream
        methods: dict[str, Method] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ServerMetadata": self.server_metadata,
            "ModelReady": self.model_ready,
            "ModelMetadata": self.model_rpc,
            "ModelInfer": self.model_rpc,
        }
        self._handlers = {
            name: grpc.unary_unary_rpc_method_handler(self._wrap(name, fn)) for name, fn in methods.items()
        }
        self._handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self.model_stream)
        self._writers: set[asyncio.Task[None]] = set()  # ModelStreamInfer's request writers

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        service, _, name = method.lstrip("/").partition("/")
        if service != SERVICE:
            return None
        return self._handlers.get(name)

    def _wrap(self, name: str, fn: Method) -> Handler:
        method = f"/{SERVICE}/{name}"

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.perf_counter()
            call = _Call()
            code = "OK"
            reply: bytes | None = None
            metrics.IN_FLIGHT.inc()
            try:
                reply = await fn(method, request, context, call)
                return reply
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                status, message = _status_for(name, err)
                code = status.name
                await context.abort(status, bounded(message))
            finally:
                metrics.IN_FLIGHT.dec()
                metrics.observe_request(
                    model=call.model, protocol="grpc", method=name, code=code, seconds=time.perf_counter() - started,
                    invoke_seconds=call.invoke_seconds, request_bytes=call.request_bytes,
                    response_bytes=call.response_bytes, vmodel=call.vmodel, pod=call.pod,
                )
                if self.dp.payloads is not None and name == "ModelInfer":
                    self.dp.payloads.offer(
                        event_id=payloads.new_id(), model=call.model, vmodel=call.vmodel, method=name,
                        protocol="grpc", request=request, response=reply, status=code,
                    )
            raise AssertionError("unreachable")

        return handler

    # -- server-level RPCs -------------------------------------------------------------
    async def server_live(self, method: str, request: bytes, context: grpc.aio.ServicerContext, call: _Call) -> bytes:
        return v2.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, method: str, request: bytes, context: grpc.aio.ServicerContext, call: _Call) -> bytes:
        return v2.ServerReadyResponse(ready=self.dp.table.synced).SerializeToString()

    async def server_metadata(self, method: str, request: bytes, context: grpc.aio.ServicerContext, call: _Call) -> bytes:
        return v2.ServerMetadataResponse(
            name="meshserve", version=server_version(), extensions=["model_repository_managed"]
        ).SerializeToString()

    # -- model RPCs ------------------------------------------------------------------------
    def _budget(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        default = self.dp.settings.default_timeout_seconds
        return default if remaining is None else max(0.0, min(remaining, default))

    async def model_rpc(self, method: str, request: bytes, context: grpc.aio.ServicerContext, call: _Call) -> bytes:
        metadata = context.invocation_metadata() or ()
        forwarded: list[tuple[str, str | bytes]] = []
        routing: list[tuple[str, str | bytes]] = []
        for key, value in metadata:
            if key in ROUTING_HEADERS:
                routing.append((key, value))
            elif key[0] != ":":
                forwarded.append((key, value))
        balanced = self.dp.balanced(forwarded)
        require_all = self.dp.require_all(forwarded)
        if method.endswith("/ModelInfer") and (problem := wire.raw_inputs_problem(request)):
            raise InvalidArgument(problem)  # the model server would fail on it with INTERNAL
        names = self.dp.names_from_headers(routing)
        if len(names) > 1:
            return await self._multi_model(method, request, context, call, names, forwarded, require_all, balanced)
        named = None if routing else wire.read_string(request, 1)
        model_id = self.dp.resolve(named, routing)
        call.model, call.vmodel = model_id, self.dp.vmodel_named(named, routing, model_id)
        payload = wire.replace_string(request, model_id, 1)
        forwarded.append(("mm-model-id", model_id))
        upstream = self.upstream

        async def send(endpoint: Endpoint, budget: float) -> bytes:
            sent = time.perf_counter()
            reply = await upstream.send(endpoint.grpc_address, method, payload, forwarded, budget)
            call.invoke_seconds = time.perf_counter() - sent
            call.pod = endpoint.pod_id
            call.request_bytes, call.response_bytes = len(payload), len(reply)
            return reply

        return await self.dp.call(model_id, send, budget=self._budget(context), balanced=balanced)

    async def _multi_model(
        self,
        method: str,
        request: bytes,
        context: grpc.aio.ServicerContext,
        call: _Call,
        names: Sequence[str],
        forwarded: Sequence[tuple[str, str | bytes]],
        require_all: bool,
        balanced: bool,
    ) -> bytes:
        """Upstream's multi-model request: the id headers name several models (or vmodels);
        the request goes to each (at most `MULTI_MODEL_PARALLELISM` at once), and the answers
        are concatenated in the order of the headers (protobuf's concatenation merges them:
        the outputs of every model in one response). A model that is not found is left out
        (`mm-required: any`, the default) or fails the call (`all`); none found is NOT_FOUND
        `none of the requested models were found`. Any other failure fails the call."""
        budget = self._budget(context)
        limit = asyncio.Semaphore(MULTI_MODEL_PARALLELISM)
        call.model = ",".join(names)

        async def one(name: str) -> bytes | None:
            async with limit:
                try:
                    model_id = self.dp.resolve(name)
                    payload = wire.replace_string(request, model_id, 1)
                    headers = [*forwarded, (MODEL_ID_HEADER, model_id)]

                    async def send(endpoint: Endpoint, left: float) -> bytes:
                        return await self.upstream.send(endpoint.grpc_address, method, payload, headers, left)

                    return await self.dp.call(model_id, send, budget=budget, balanced=balanced)
                except MeshError as err:
                    if err.status == "NOT_FOUND" and not require_all:
                        log.info("model %s not found (one of %d requested)", name, len(names))
                        return None
                    raise

        replies = [r for r in await _all_or_first_error([one(name) for name in names]) if r is not None]
        if not replies:
            raise NotFound("none of the requested models were found")
        reply = b"".join(replies)
        call.request_bytes, call.response_bytes = len(request), len(reply)
        return reply

    async def model_stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        """Forward a ModelStreamInfer stream to one copy, through the data plane as a unary
        call goes: a copy picked by least-request, counted in flight for the whole stream and
        in usage once it ends well, another copy tried when the chosen one is gone before it
        answered (the requests sent so far are replayed to it). Every request in the stream
        is for the model the first one names; each has its model name rewritten in the bytes."""
        method = MODEL_STREAM_INFER
        code, model_id = "OK", ""
        source: ReplayableRequests | None = None
        metrics.IN_FLIGHT.inc()
        try:
            first = await anext(aiter(requests), None)
            if first is None:
                return
            metadata = context.invocation_metadata() or ()
            routing = [(k, v) for k, v in metadata if k in ROUTING_HEADERS]
            forwarded: list[tuple[str, str | bytes]] = [
                (k, v) for k, v in metadata if k not in ROUTING_HEADERS and k[0] != ":"
            ]
            model_id = self.dp.resolve(None if routing else wire.read_string(first, 1), routing)
            forwarded.append((MODEL_ID_HEADER, model_id))
            stream_model = model_id

            def checked(item: bytes) -> bytes:
                if problem := wire.raw_inputs_problem(item):
                    raise InvalidArgument(problem)
                return wire.replace_string(item, stream_model, 1)

            async def client_requests() -> AsyncIterator[bytes]:
                yield first
                async for item in requests:
                    yield item

            # checked as they are sent (the first after a copy is found, as before)
            source = ReplayableRequests(
                client_requests(), first=None, rewrite=checked, limit=self.dp.settings.max_message_bytes
            )
            await self.dp.call(
                model_id, self._stream_sender(method, source, forwarded, context), budget=self._budget(context),
                balanced=self.dp.balanced(forwarded),
            )
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            status, message = _status_for("ModelStreamInfer", err)
            code = status.name
            await context.abort(status, bounded(message))
        finally:
            if source is not None:
                source.close()
            metrics.IN_FLIGHT.dec()
            metrics.count(model_id, "grpc", "ModelStreamInfer", code)

    def _stream_sender(
        self,
        method: str,
        source: ReplayableRequests,
        forwarded: Sequence[tuple[str, str | bytes]],
        context: grpc.aio.ServicerContext,
    ) -> Callable[[Endpoint, float], Awaitable[None]]:
        """The data plane's `send` for one ModelStreamInfer: the whole stream to `endpoint`,
        its replies relayed to the client. `CopyGone` only before the first reply relayed and
        while every request sent is kept for a replay."""

        async def send(endpoint: Endpoint, budget: float) -> None:
            refused: list[InvalidArgument] = []  # a request that must not reach the model server
            # the stream keeps the client's own deadline (a stream may outlive the unary cap)
            upstream = self.upstream.stream_callable(endpoint.grpc_address, method)(
                metadata=forwarded, timeout=context.time_remaining()
            )

            async def pump() -> None:
                # Our own writer rather than a request iterator handed to grpc (found by
                # tests/fuzz): an exception escaping that iterator left the call open until its
                # deadline. Here a bad request ends the call, and the writer stops once the call
                # has ended; the status is read below. A write that races the model server's
                # early error status can still make grpcio replace that status with INTERNAL
                # "Internal error from Core" (its send failure overrides the received status).
                try:
                    async for message in source.stream():
                        if upstream.done():  # grpcio turns a write after the end into its own INTERNAL
                            return
                        await upstream.write(message)
                    await upstream.done_writing()
                except (wire.WireError, InvalidArgument) as err:
                    refused.append(
                        err if isinstance(err, InvalidArgument) else InvalidArgument(f"malformed ModelStreamInfer request: {err}")
                    )
                    upstream.cancel()
                except Exception:  # the call (ours or the client's) has ended
                    log.debug("stream writer for %s stopped", endpoint.pod_id, exc_info=True)

            writer = asyncio.create_task(pump(), name=f"stream-writer:{endpoint.pod_id}")
            # Not cancelled when the reply stream ends: it may be waiting for the client's next
            # message, a read that ends by itself when the call does. Kept referenced until then.
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
            relayed = False
            try:
                async for reply in upstream:
                    if not relayed:
                        source.commit()  # answered: no replay from now on
                        relayed = True
                    await context.write(reply)
            except asyncio.CancelledError:
                if not refused:  # not our cancel: the client's, or shutdown
                    raise
                raise refused[0] from None
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or err.code().name
                if not relayed and not refused and source.replayable and copy_gone(code, details):
                    raise CopyGone(f"{code.name}: {details}") from err
                raise from_grpc(client_status(method, code, details), details) from err
            if refused:  # the call ended before our cancel was seen
                raise refused[0]

        return send

    async def model_ready(self, method: str, request: bytes, context: grpc.aio.ServicerContext, call: _Call) -> bytes:
        try:
            return await self.model_rpc(method, request, context, call)
        except MeshError as err:
            if err.status in ("NOT_FOUND", "INVALID_ARGUMENT"):
                raise
            log.info("model not ready: %s", err.message)
            return v2.ModelReadyResponse(ready=False).SerializeToString()


MULTI_MODEL_PARALLELISM = 4
"""Models of one multi-model request called at once (upstream's `MM_MULTI_PARALLELISM` default)."""


async def _all_or_first_error(calls: Sequence[Awaitable[bytes | None]]) -> list[bytes | None]:
    """Every call's result in order; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


MAX_DETAILS_BYTES = 2000
"""The longest status message the router sends: gRPC carries it percent-encoded in a header
(up to 3 bytes per byte) and clients refuse more than 8 KB of headers (RESOURCE_EXHAUSTED)."""


def bounded(message: str) -> str:
    """`message`, cut to MAX_DETAILS_BYTES of UTF-8 (marked with "...")."""
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= MAX_DETAILS_BYTES:
        return message
    return encoded[: MAX_DETAILS_BYTES - 3].decode("utf-8", "ignore") + "..."


def _status_for(name: str, err: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a failed `name` call ends with: our own errors as they say,
    a malformed message as INVALID_ARGUMENT, anything else as INTERNAL (logged)."""
    if isinstance(err, MeshError) or translate(err) is not None:
        return status_for(err, where=name)  # the one mapping; the router's own texts below
    if isinstance(err, wire.WireError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} request: {err}"
    log.exception("unexpected error in %s", name)
    return grpc.StatusCode.INTERNAL, "internal router error; see the router log"
