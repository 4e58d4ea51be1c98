"""Prometheus metrics of the router (on the REST port at /metrics, and on :2112 when set).

Two families sit side by side:

* `meshserve_router_*`: ours, in seconds, labelled by protocol (and model for the request
  count, as before).
* `modelmesh_*`: ModelMesh's request metrics with its names, units (milliseconds, bytes),
  buckets and labels (`method`, `code` with the gRPC code name; `modelId` and `vModelId`
  too when per-model metrics are on, upstream's `per_model_metrics`), so dashboards and
  alerts written for ModelMesh work unchanged. The router is the mesh's front door, so it
  serves the external request time (`modelmesh_api_request_milliseconds`), the time of the
  hop to the model server (`modelmesh_invoke_model_milliseconds`), payload sizes and cache
  misses. Load, unload and model counts come from the scheduler, per-pod capacity from
  each pod's puller.

Every request is counted once, by `observe_request`: from the Python doors (server.py,
rest.py, other_rpcs.py) for what they serve, and from Envoy's access log
(`app._served_by_envoy`) for what Envoy forwards straight to a pod.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from meshserve.router import access

REQUESTS = Counter(
    "meshserve_router_requests_total",
    "Requests by model, protocol, method and status",
    ["model", "protocol", "method", "code"],
)
LATENCY = Histogram(
    "meshserve_router_request_seconds",
    "Request latency through the router",
    ["protocol", "method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PAYLOAD_EVENTS = Counter(
    "meshserve_router_payload_events_total",
    "CloudEvents for payload processors: sent, failed (error or timeout) or dropped (queue full)",
    ["processor", "outcome"],
)
IN_FLIGHT = Gauge("meshserve_router_in_flight", "Requests in flight through the router")
QUEUED = Gauge(
    "meshserve_router_queued_requests",
    "Requests waiting for a free slot on a copy (the runtime's per-copy concurrency limit)",
)
QUEUE_OVERLOADS = Counter(
    "meshserve_router_queue_overloads_total",
    "Requests refused at once (RESOURCE_EXHAUSTED): their model's copies held upstream's bound of requests",
)
_MISSES = Counter("meshserve_router_misses_total", "Requests that found no loaded copy", ["model"])
_COLD_WAIT = Histogram(
    "meshserve_router_cold_wait_seconds",
    "Time requests waited for a model to load",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
ENVOY_FORWARDED = Counter(
    "meshserve_router_envoy_forwarded_total",
    "Requests Envoy forwarded straight to a pod (data path envoy; read from its access log)",
    ["protocol"],
)
ENVOY_RESTARTS = Counter("meshserve_router_envoy_restarts_total", "Times the router restarted its Envoy")
ROUTE_SNAPSHOTS = Counter("meshserve_router_route_snapshots_total", "Route snapshots received from the scheduler")
FALLBACK_ROUTES = Gauge(
    "meshserve_router_fallback_routes",
    "Routes kept from before the last snapshot (last known, used until they expire)",
    ["kind"],
)

# -- ModelMesh's names -------------------------------------------------------------------
MS_TIME_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 75, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000, 120000, 300000)
"""Upstream's buckets for every millisecond timing histogram."""
MESSAGE_SIZE_BUCKETS = tuple(128.0 * 4**i for i in range(8))
"""Upstream's payload-size buckets: 128 B, x4 each, eight of them (to 2 MiB)."""

HTTP_TO_GRPC = {
    200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED", 409: "ABORTED", 412: "FAILED_PRECONDITION", 413: "RESOURCE_EXHAUSTED",
    422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED", 507: "RESOURCE_EXHAUSTED",
}  # fmt: skip


def grpc_code(code: str) -> str:
    """The gRPC code name upstream labels requests with: REST answers carry an HTTP status,
    mapped the way the gRPC <-> HTTP mapping of our errors goes (other 4xx: FAILED_PRECONDITION,
    other 5xx: INTERNAL)."""
    if not code.isdigit():
        return code
    status = int(code)
    if status in HTTP_TO_GRPC:
        return HTTP_TO_GRPC[status]
    if 200 <= status < 300:
        return "OK"
    return "FAILED_PRECONDITION" if 400 <= status < 500 else "INTERNAL"


class ModelMeshMetrics:
    """Upstream's router-side metrics; the label set is fixed when they are made."""

    def __init__(self, *, per_model: bool, registry: CollectorRegistry = REGISTRY) -> None:
        reg = registry
        self.per_model = per_model
        request_labels = ["method", "code", *(["modelId", "vModelId"] if per_model else [])]
        model_labels = ["modelId", "vModelId"] if per_model else []
        self.api = Histogram(
            "modelmesh_api_request_milliseconds", "External inference request time",
            request_labels, buckets=MS_TIME_BUCKETS, registry=reg,
        )
        self.invoke = Histogram(
            "modelmesh_invoke_model_milliseconds", "Internal model server inference request time",
            request_labels, buckets=MS_TIME_BUCKETS, registry=reg,
        )
        self.request_size = Histogram(
            "modelmesh_request_size_bytes", "Inference request payload size",
            request_labels, buckets=MESSAGE_SIZE_BUCKETS, registry=reg,
        )
        self.response_size = Histogram(
            "modelmesh_response_size_bytes", "Inference response payload size",
            request_labels, buckets=MESSAGE_SIZE_BUCKETS, registry=reg,
        )
        self.cache_miss = Histogram(
            "modelmesh_cache_miss_milliseconds", "Cache miss delay",
            model_labels, buckets=MS_TIME_BUCKETS, registry=reg,
        )
        self.queue_delay = Histogram(
            "modelmesh_req_queue_delay_milliseconds", "Time spent in inference request queue",
            model_labels, buckets=MS_TIME_BUCKETS, registry=reg,
        )

    def _labels(self, method: str, code: str, model: str) -> tuple[str, ...]:
        return (method, code, model, model) if self.per_model else (method, code)

    def request(
        self, *, model: str, method: str, code: str, seconds: float,
        invoke_seconds: float | None = None, request_bytes: int | None = None, response_bytes: int | None = None,
    ) -> None:
        labels = self._labels(method, grpc_code(code), model)
        self.api.labels(*labels).observe(seconds * 1000)
        if invoke_seconds is not None:
            self.invoke.labels(*labels).observe(invoke_seconds * 1000)
        if request_bytes is not None:
            self.request_size.labels(*labels).observe(request_bytes)
        if response_bytes is not None:
            self.response_size.labels(*labels).observe(response_bytes)

    def miss(self, *, model: str, seconds: float) -> None:
        child = self.cache_miss.labels(model, model) if self.per_model else self.cache_miss
        child.observe(seconds * 1000)

    def queued(self, *, model: str, seconds: float) -> None:
        # upstream labels its timing metrics with the model id and an empty vModelId
        child = self.queue_delay.labels(model, "") if self.per_model else self.queue_delay
        child.observe(seconds * 1000)


_mm: ModelMeshMetrics | None = None


def configure(*, per_model: bool) -> ModelMeshMetrics:
    """Make upstream's metrics with or without per-model labels (once, at start-up; a
    process that never calls it gets them without)."""
    global _mm
    if _mm is not None and _mm.per_model == per_model:
        return _mm
    if _mm is not None:
        for metric in (_mm.api, _mm.invoke, _mm.request_size, _mm.response_size, _mm.cache_miss, _mm.queue_delay):
            REGISTRY.unregister(metric)
    _mm = ModelMeshMetrics(per_model=per_model)
    return _mm


def modelmesh() -> ModelMeshMetrics:
    return _mm or configure(per_model=False)


# -- what the doors call ----------------------------------------------------------------
_counters: dict[tuple[str, str, str, str], object] = {}


def _count(key: tuple[str, str, str, str]) -> None:
    child = _counters.get(key)
    if child is None:  # label children are cached: labels() costs a lock and a dict
        child = _counters[key] = REQUESTS.labels(*key)
    child.inc()  # type: ignore[attr-defined]


def count(model: str, protocol: str, method: str, code: str) -> None:
    """Only the request counter: a stream, whose duration is no request time."""
    _count((model, protocol, method, code))


def miss(model: str) -> None:
    """A request found no loaded copy of `model` (the data plane asks the scheduler)."""
    _MISSES.labels(model).inc()


def cold_wait(model: str, seconds: float) -> None:
    """How long a request waited for `model` to load."""
    _COLD_WAIT.observe(seconds)
    modelmesh().miss(model=model, seconds=seconds)


def queue_wait(model: str, seconds: float) -> None:
    """How long a request of `model` waited for a free slot on a copy (per-copy
    concurrency limits; 0 when one was free at once, as upstream counts it)."""
    modelmesh().queued(model=model, seconds=seconds)


def observe_request(
    *, model: str, protocol: str, method: str, code: str, seconds: float,
    invoke_seconds: float | None = None, request_bytes: int | None = None, response_bytes: int | None = None,
    vmodel: str | None = None, pod: str | None = None, path: str = "python",
) -> None:
    """One request answered, by a Python door or by Envoy (from its access log): every family,
    and the access-log line when it is on. `code`: the gRPC status name, or the HTTP status of
    a REST answer; `vmodel`: the vmodel the request named; `pod`: the pod that answered."""
    access.write(
        model=model, vmodel=vmodel, pod=pod, protocol=protocol, method=method, code=code, seconds=seconds,
        request_bytes=request_bytes, response_bytes=response_bytes, path=path,
    )
    _count((model, protocol, method, code))
    LATENCY.labels(protocol, method).observe(seconds)
    modelmesh().request(
        model=model, method=method, code=code, seconds=seconds,
        invoke_seconds=invoke_seconds, request_bytes=request_bytes, response_bytes=response_bytes,
    )
