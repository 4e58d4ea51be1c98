"""`meshserve top`'s figures (`meshserve.cli.top`) from the Prometheus text prometheus_client
itself writes, with the router's metric names and labels; no stack, no clock."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from meshserve.cli.top import (
    Histogram as Hist,
)
from meshserve.cli.top import (
    Window,
    footer,
    merge,
    model_rows,
    parse_router_metrics,
    pod_rows,
)


def router_text(requests: dict[str, int], latencies_ms: dict[str, list[float]], *, per_model: bool = True) -> str:
    """What a router's /metrics says after these requests (the router's families, made with
    prometheus_client in a registry of their own)."""
    reg = CollectorRegistry()
    count = Counter("meshserve_router_requests_total", "r", ["model", "protocol", "method", "code"], registry=reg)
    labels = ["method", "code", *(["modelId", "vModelId"] if per_model else [])]
    api = Histogram("modelmesh_api_request_milliseconds", "t", labels,
                    buckets=(1, 2, 5, 10, 20, 50, 100), registry=reg)
    for model, n in requests.items():
        count.labels(model, "grpc", "ModelInfer", "OK").inc(n)
    for model, values in latencies_ms.items():
        for v in values:
            (api.labels("ModelInfer", "OK", model, model) if per_model else api.labels("ModelInfer", "OK")).observe(v)
    return generate_latest(reg).decode()


def test_counts_and_latency_per_model() -> None:
    sample = parse_router_metrics(router_text({"a": 3, "b": 1}, {"a": [1, 3, 8], "b": [40]}))
    assert sample.requests == {"a": 3.0, "b": 1.0}
    assert sample.per_model_latency
    assert sample.latency["a"].count == 3 and sample.latency["a"].sum == 12
    assert sample.latency_all.count == 4


def test_without_per_model_metrics_only_the_total_latency_is_known() -> None:
    sample = parse_router_metrics(router_text({"a": 2}, {"a": [1, 2]}, per_model=False))
    assert not sample.per_model_latency and sample.latency == {} and sample.latency_all.count == 2
    assert "MESHSERVE_ROUTER_PER_MODEL_METRICS" in footer(Window(sample))
    assert footer(Window(sample)).startswith("all requests since the router started: 2, avg 1.5 ms")


def test_rates_and_latency_over_a_window() -> None:
    older = parse_router_metrics(router_text({"a": 10}, {"a": [100] * 10}))
    newer = parse_router_metrics(router_text({"a": 30}, {"a": [100] * 10 + [2] * 20}))
    window = Window(newer, older, seconds=4.0)
    assert window.rate("a") == 5.0
    assert window.rate("never-called") == 0.0
    latency = window.latency("a")
    assert latency is not None and latency.count == 20 and latency.mean() == 2.0   # only what happened in the window
    assert Window(newer).rate("a") is None                                       # one scrape: no rate


def test_a_restarted_router_counts_from_zero_not_negative() -> None:
    older = parse_router_metrics(router_text({"a": 50}, {}))
    newer = parse_router_metrics(router_text({"a": 4}, {}))
    assert Window(newer, older, seconds=2.0).rate("a") == 2.0


@pytest.mark.parametrize(("values", "q", "expected"), [
    pytest.param([1.5] * 10, 0.5, 1.5, id="inside-one-bucket"),
    pytest.param([0.5] * 9 + [30], 0.95, 35.0, id="tail-bucket"),
    pytest.param([500], 0.95, 100.0, id="above-the-last-bound"),
])
def test_quantiles_as_prometheus_computes_them(values: list[float], q: float, expected: float) -> None:
    h = parse_router_metrics(router_text({}, {"a": values})).latency["a"]
    assert h.quantile(q) == pytest.approx(expected)


def test_an_empty_histogram_has_no_figures() -> None:
    assert Hist().mean() is None and Hist().quantile(0.95) is None


def test_several_routers_add_up() -> None:
    one = parse_router_metrics(router_text({"a": 1}, {"a": [1]}))
    two = parse_router_metrics(router_text({"a": 2, "b": 5}, {"a": [3]}))
    both = merge([one, two])
    assert both.requests == {"a": 3.0, "b": 5.0} and both.latency["a"].count == 2


def models() -> list[dict[str, Any]]:
    return [
        {"id": "a", "state": "Loaded", "copies": [{"pod": "pod-0", "state": "loaded"}, {"pod": "pod-1", "state": "loaded"}]},
        {"id": "b", "state": "Loading", "copies": [{"pod": "pod-1", "state": "loading"}]},
    ]


def test_model_rows() -> None:
    window = Window(parse_router_metrics(router_text({"a": 12}, {"a": [4, 4]})),
                    parse_router_metrics(router_text({"a": 2}, {})), seconds=5.0)
    rows = model_rows(models(), window)
    assert rows[0] == ["a", "Loaded", "2/2", "12", "2.00", "4.0", rows[0][6]]
    assert rows[1][:5] == ["b", "Loading", "0/1", "-", "0.00"]


def test_pod_rows_share_a_models_rate_among_its_copies() -> None:
    pods = [
        {"id": "pod-0", "runtime": "mlserver-1.x", "capacityBytes": 100 << 20, "allocatedBytes": 10 << 20,
         "measuredUsedBytes": 25 << 20, "loading": 0, "models": [{"id": "a", "bytes": 10 << 20}]},
        {"id": "pod-1", "runtime": "mlserver-1.x", "capacityBytes": 100 << 20, "allocatedBytes": 30 << 20,
         "measuredUsedBytes": 0, "loading": 1, "models": [{"id": "a", "bytes": 10 << 20}, {"id": "b", "bytes": 20 << 20}]},
    ]
    window = Window(parse_router_metrics(router_text({"a": 40}, {})), parse_router_metrics(router_text({"a": 0}, {})),
                    seconds=10.0)
    rows = pod_rows(pods, models(), window)
    assert rows[0] == ["pod-0", "mlserver-1.x", "100.0Mi", "10.0Mi", "10%", "25.0Mi", "1", "0", "2.00"]
    assert rows[1] == ["pod-1", "mlserver-1.x", "100.0Mi", "30.0Mi", "30%", "-", "2", "1", "2.00"]
    assert pod_rows(pods, models(), None)[0][-1] == "-"
