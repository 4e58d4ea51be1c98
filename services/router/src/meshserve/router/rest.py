"""REST front door (:8008): the KServe v2 HTTP/JSON protocol, plus /metrics (app.py adds
/healthz and /readyz from common.health).

Model routes resolve and ensure through the same `DataPlane` as gRPC, then forward
the body verbatim (JSON, or the binary-data extension's JSON header + raw tensors) to
the chosen copy's model-server REST endpoint with the model name in the path
rewritten to the model id. Errors are `{"error": "..."}` with the code the shared
error classes declare (404 unknown model, 400 bad request, 412/503 load failures);
no request body can produce a 500.

Owns: `RestFrontDoor` and `create_app` (the Starlette app, with /metrics), the REST error body, the replay over gRPC that explains a bare 500 (`_explain`).
May import: the data plane, the upstream clients and errors, jsonv2, metrics, payloads,
v2 names; never the gRPC door, the other-RPC handler or the app.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshserve.common.errors import InvalidArgument, MeshError, NotFound, http_status_for
from meshserve.router import jsonv2, metrics, payloads
from meshserve.router.dataplane import DataPlane
from meshserve.router.table import Endpoint
from meshserve.router.upstream import (
    REQUEST_HEADERS,
    GrpcUpstream,
    RestReply,
    RestUpstream,
    UpstreamFailed,
)
from meshserve.router.upstream_errors import CopyGone
from meshserve.router.v2 import MODEL_INFER, ROUTING_HEADERS, server_version

log = logging.getLogger(__name__)
JSON = "application/json"
INFER_METHOD = MODEL_INFER


def _json(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type=JSON)


def error_response(err: MeshError) -> Response:
    status = err.http_status
    if type(err) is MeshError and status == 500:  # rebuilt from a status with no class of its own
        status = http_status_for(err.status)
    return _json({"error": err.message}, status)


class RestFrontDoor:
    def __init__(
        self, dataplane: DataPlane, upstream: RestUpstream, grpc_upstream: GrpcUpstream, *, ready: Callable[[], bool],
        extra_metrics: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.dp = dataplane
        self.upstream = upstream
        self.grpc = grpc_upstream
        self.ready = ready
        self.extra_metrics = extra_metrics  # more Prometheus text after ours (Envoy's envoy_* families)

    # -- server-level -----------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def server_ready(self, request: Request) -> Response:
        ok = self.ready()
        return _json({"ready": ok}, 200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return _json({"name": "meshserve", "version": server_version(), "extensions": ["model_repository_managed"]})

    async def metrics(self, request: Request) -> Response:
        text = generate_latest()
        if self.extra_metrics is not None:
            more = await self.extra_metrics()
            if more:
                text += b"\n" + more.encode()
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    # -- model routes -------------------------------------------------------------------------
    async def model(self, request: Request) -> Response:
        """GET /v2/models/{name}[/versions/{v}][/ready] and POST .../infer."""
        params = request.path_params
        suffix = params.get("action", "")
        method_name = {"": "ModelMetadata", "ready": "ModelReady", "infer": "ModelInfer"}.get(suffix)
        started = time.perf_counter()
        model_id, status = "", 500
        vmodel: str | None = None
        pod: list[str] = []  # the pod that answered (set by `send`)
        body: bytes | None = None
        reply: RestReply | None = None
        metrics.IN_FLIGHT.inc()
        try:
            if method_name is None:
                raise NotFound(f"no such endpoint: {request.url.path}")
            if (request.method == "POST") != (suffix == "infer"):
                status = 405
                return _json({"error": f"method {request.method} not allowed on {request.url.path}"}, 405)
            routing = [(k, v) for k, v in request.headers.items() if k in ROUTING_HEADERS]
            model_id = self.dp.resolve(params["name"], routing)
            vmodel = self.dp.vmodel_named(params["name"], routing, model_id)
            version = params.get("version")
            path = f"/v2/models/{quote(model_id, safe='')}"
            if version:
                path += f"/versions/{quote(version, safe='')}"
            if suffix:
                path += f"/{suffix}"
            if "inference-header-content-length" in request.headers:
                raise InvalidArgument(
                    "the binary tensor data extension is not supported by the model server (MLServer 1.7); "
                    "send JSON tensors (tritonclient.http: set_data_from_numpy(..., binary_data=False))"
                )
            body = await request.body() if request.method == "POST" else b""
            headers = {k: v for k in REQUEST_HEADERS if (v := request.headers.get(k))}
            headers["mm-model-id"] = model_id
            upstream, infer, verb = self.upstream, suffix == "infer", request.method

            async def send(endpoint: Endpoint, budget: float) -> RestReply:
                pod[:] = [endpoint.pod_id]
                try:
                    return await upstream.send(endpoint.rest_address, verb, path, body, headers, budget, infer=infer)
                except UpstreamFailed:
                    if not infer or "inference-header-content-length" in headers:
                        raise
                    await self._explain(endpoint, model_id, body, budget)
                    raise

            try:
                reply = await self.dp.call(
                    model_id, send, budget=self.dp.settings.default_timeout_seconds,
                    balanced=self.dp.balanced(request.headers.items()),
                )
            except MeshError as err:
                if suffix != "ready" or isinstance(err, NotFound) or err.http_status == 400:
                    raise
                status = 503
                return _json({"name": params["name"], "ready": False, "error": err.message}, 503)
            status = reply.status
            reply.headers["mm-model-id"] = model_id
            return Response(reply.body, status_code=reply.status, headers=reply.headers)
        except MeshError as err:
            response = error_response(err)
            status = response.status_code
            return response
        except Exception:
            log.exception("unexpected error in REST %s", method_name)
            return _json({"error": "internal router error; see the router log"}, 500)
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.observe_request(
                model=model_id, protocol="rest", method=method_name or "unknown", code=str(status),
                seconds=time.perf_counter() - started, vmodel=vmodel, pod=pod[0] if pod else None,
                request_bytes=len(body) if body is not None else None,
                response_bytes=len(reply.body) if reply is not None else None,
            )
            if self.dp.payloads is not None and method_name == "ModelInfer" and body is not None:
                self.dp.payloads.offer(
                    event_id=payloads.new_id(), model=model_id, vmodel=vmodel, method=method_name, protocol="rest",
                    request=body, response=reply.body if reply is not None else None, status=str(status),
                )


    async def _explain(self, endpoint: Endpoint, model_id: str, body: bytes, budget: float) -> None:
        """Replay a JSON infer that failed without a reason over gRPC, where MLServer gives one.

        Raises InvalidArgument (the request is bad, with the reason) or returns (a real failure)."""
        try:
            request = jsonv2.to_infer_request(body, model_id)
        except jsonv2.JsonTensorError as err:
            raise InvalidArgument(str(err)) from err
        try:
            await self.grpc.send(
                endpoint.grpc_address, INFER_METHOD, request.SerializeToString(), [("mm-model-id", model_id)], budget
            )
        except MeshError as err:
            if err.status == "INVALID_ARGUMENT":
                raise InvalidArgument(err.message) from err
        except CopyGone:
            pass


def create_app(
    dataplane: DataPlane, upstream: RestUpstream, grpc_upstream: GrpcUpstream, *, ready: Callable[[], bool],
    extra_metrics: Callable[[], Awaitable[str]] | None = None,
) -> Starlette:
    door = RestFrontDoor(dataplane, upstream, grpc_upstream, ready=ready, extra_metrics=extra_metrics)
    get, post = ["GET"], ["POST"]
    routes = [
        Route("/v2/health/live", door.live, methods=get),
        Route("/v2/health/ready", door.server_ready, methods=get),
        Route("/v2", door.server_metadata, methods=get),
        Route("/metrics", door.metrics, methods=get),
        Route("/v2/models/{name}", door.model, methods=get),
        Route("/v2/models/{name}/versions/{version}", door.model, methods=get),
        Route("/v2/models/{name}/{action}", door.model, methods=[*get, *post]),
        Route("/v2/models/{name}/versions/{version}/{action}", door.model, methods=[*get, *post]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json({"error": f"no such endpoint: {request.method} {request.url.path}"}, 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _json({"error": f"method {request.method} not allowed on {request.url.path}"}, 405)

    handlers: dict[int | type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
        404: not_found,
        405: not_allowed,
    }
    return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
