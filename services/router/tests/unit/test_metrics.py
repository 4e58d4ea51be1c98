"""The router's metrics helpers (metrics.py): upstream's code labels, and the hand-offs
that give ModelMesh's histograms what the doors observe."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from meshserve.router import metrics


@pytest.mark.parametrize(
    ("code", "grpc"),
    [("OK", "OK"), ("NOT_FOUND", "NOT_FOUND"), ("200", "OK"), ("204", "OK"), ("400", "INVALID_ARGUMENT"),
     ("404", "NOT_FOUND"), ("418", "FAILED_PRECONDITION"), ("503", "UNAVAILABLE"), ("504", "DEADLINE_EXCEEDED"),
     ("507", "RESOURCE_EXHAUSTED"), ("599", "INTERNAL")],
)  # fmt: skip
def test_rest_statuses_are_labelled_with_grpc_code_names(code: str, grpc: str) -> None:
    assert metrics.grpc_code(code) == grpc


def _value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


def test_per_model_labels_are_opt_in() -> None:
    plain, per_model = CollectorRegistry(), CollectorRegistry()
    metrics.ModelMeshMetrics(per_model=False, registry=plain).request(
        model="m", method="ModelInfer", code="200", seconds=0.004, invoke_seconds=0.003, request_bytes=100, response_bytes=50
    )
    metrics.ModelMeshMetrics(per_model=True, registry=per_model).request(
        model="m", method="ModelInfer", code="OK", seconds=0.004
    )
    ok = {"method": "ModelInfer", "code": "OK"}
    assert _value(plain, "modelmesh_api_request_milliseconds_sum", ok) == pytest.approx(4.0)
    assert _value(plain, "modelmesh_invoke_model_milliseconds_sum", ok) == pytest.approx(3.0)
    assert _value(plain, "modelmesh_request_size_bytes_sum", ok) == 100
    assert _value(plain, "modelmesh_response_size_bytes_bucket", {**ok, "le": "128.0"}) == 1
    labelled = {**ok, "modelId": "m", "vModelId": "m"}
    assert _value(per_model, "modelmesh_api_request_milliseconds_count", labelled) == 1
    assert _value(per_model, "modelmesh_invoke_model_milliseconds_count", labelled) == 0  # not observed


def test_a_doors_request_reaches_ours_and_upstreams_histograms_with_the_status() -> None:
    mm = metrics.modelmesh()
    ok = ("ModelReady", "OK")
    before = mm.api.labels(*ok)._sum.get()  # type: ignore[attr-defined]
    ours = metrics.LATENCY.labels("grpc", "ModelReady")._sum.get()  # type: ignore[attr-defined]
    metrics.observe_request(model="m-doors", protocol="grpc", method="ModelReady", code="OK", seconds=0.25)
    metrics.count("m-doors", "grpc", "ModelReady", "OK")  # a stream: counted, no time
    assert mm.api.labels(*ok)._sum.get() - before == pytest.approx(250.0)  # type: ignore[attr-defined]
    assert metrics.LATENCY.labels("grpc", "ModelReady")._sum.get() - ours == pytest.approx(0.25)  # type: ignore[attr-defined]
    counted = metrics.REQUESTS.labels("m-doors", "grpc", "ModelReady", "OK")._value.get()  # type: ignore[attr-defined]
    assert counted == 2


def test_a_miss_labels_the_delay_of_its_model() -> None:
    registry = CollectorRegistry()
    mm = metrics.ModelMeshMetrics(per_model=True, registry=registry)
    saved = metrics._mm
    metrics._mm = mm
    try:
        async def request(model: str, seconds: float) -> None:
            metrics.miss(model)
            await asyncio.sleep(0)  # the other request's miss comes in between
            metrics.cold_wait(model, seconds)

        async def both() -> None:
            await asyncio.gather(request("a", 0.1), request("b", 0.2))

        asyncio.run(both())
    finally:
        metrics._mm = saved
    assert _value(registry, "modelmesh_cache_miss_milliseconds_sum", {"modelId": "a", "vModelId": "a"}) == pytest.approx(100)
    assert _value(registry, "modelmesh_cache_miss_milliseconds_sum", {"modelId": "b", "vModelId": "b"}) == pytest.approx(200)
