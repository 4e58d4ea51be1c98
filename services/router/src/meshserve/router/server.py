"""gRPC front door (:8033): the KServe v2 `inference.GRPCInferenceService`.

A generic handler receives every request as raw bytes. Server-level RPCs are answered
here; model RPCs have their model-name field read and rewritten in the bytes and are
forwarded by the data plane. Exceptions become statuses; nothing a client sends can
crash the process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version

import grpc

from meshserve.common.errors import InvalidArgument, MeshError
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.router import metrics, wire
from meshserve.router.dataplane import DataPlane

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class InferenceHandler(grpc.GenericRpcHandler):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane
        self._handlers: dict[str, grpc.RpcMethodHandler] = {
            name: grpc.unary_unary_rpc_method_handler(self._wrap(name, fn))
            for name, fn in {
                "ServerLive": self.server_live,
                "ServerReady": self.server_ready,
                "ServerMetadata": self.server_metadata,
                "ModelReady": self.model_ready,
                "ModelMetadata": self.model_rpc,
                "ModelInfer": self.model_rpc,
            }.items()
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        service, _, name = method.lstrip("/").partition("/")
        if service != SERVICE:
            return None
        return self._handlers.get(name)

    def _wrap(self, name: str, fn: Callable[[str, bytes, grpc.aio.ServicerContext], Awaitable[bytes]]) -> Handler:
        method = f"/{SERVICE}/{name}"

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.perf_counter()
            metrics.IN_FLIGHT.inc()
            code, model = "OK", ""
            try:
                reply = await fn(method, request, context)
                return reply
            except MeshError as err:
                code = err.code.name
                await context.abort(err.code, err.message)
            except wire.WireError as err:
                code = "INVALID_ARGUMENT"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} request: {err}")
            except grpc.aio.AbortError:
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("unexpected error in %s", name)
                await context.abort(grpc.StatusCode.INTERNAL, "internal router error; see the router log")
            finally:
                metrics.IN_FLIGHT.dec()
                metrics.LATENCY.labels(name).observe(time.perf_counter() - started)
                metrics.REQUESTS.labels(model, name, code).inc()
            raise AssertionError("unreachable")

        return handler

    # -- server-level RPCs -------------------------------------------------------------
    async def server_live(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return v2.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return v2.ServerReadyResponse(ready=self.dp.table.synced).SerializeToString()

    async def server_metadata(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return v2.ServerMetadataResponse(
            name="meshserve", version=_version(), extensions=["model_repository_managed"]
        ).SerializeToString()

    # -- model RPCs ------------------------------------------------------------------------
    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.dp.settings.default_timeout_seconds if remaining is None else max(0.0, remaining)

    async def _route(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = [(k, v) for k, v in (context.invocation_metadata() or ()) if not k.startswith(":")]
        name = self.dp.name_from_headers(metadata) or wire.read_string(request, 1)
        if not name:
            raise InvalidArgument("the request names no model: set model_name (or the mm-vmodel-id header)")
        model_id = self.dp.table.resolve(name)
        payload = wire.replace_string(request, model_id, 1)
        forwarded = [(k, v) for k, v in metadata if k not in ("mm-model-id", "mm-vmodel-id", "mm-model-id-bin", "mm-vmodel-id-bin", "tas-model-id")]
        await context.send_initial_metadata((("mm-model-id", model_id),))
        return await self.dp.forward(
            method=method, model_id=model_id, payload=payload, metadata=forwarded, timeout=self._timeout(context)
        )

    async def model_rpc(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._route(method, request, context)

    async def model_ready(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await self._route(method, request, context)
        except MeshError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                raise
            log.info("model not ready: %s", err.message)
            return v2.ModelReadyResponse(ready=False).SerializeToString()


def _version() -> str:
    try:
        return version("meshserve")
    except Exception:  # noqa: BLE001
        return "0.0.0"
