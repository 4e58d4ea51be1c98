"""Prometheus metrics of the router (on the REST port at /metrics, and on :2112 when set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
IN_FLIGHT = Gauge("meshserve_router_in_flight", "Requests in flight through the router")
MISSES = Counter("meshserve_router_misses_total", "Requests that found no loaded copy", ["model"])
COLD_WAIT = Histogram(
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

_counters: dict[tuple[str, str, str, str], object] = {}


def count(model: str, protocol: str, method: str, code: str) -> None:
    """Increment the request counter; label children are cached (labels() costs a lock and a dict)."""
    key = (model, protocol, method, code)
    child = _counters.get(key)
    if child is None:
        child = _counters[key] = REQUESTS.labels(*key)
    child.inc()  # type: ignore[attr-defined]
