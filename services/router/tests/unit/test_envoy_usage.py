"""Envoy's access-log lines -> what it served (envoy/usage.py, pure)."""

from __future__ import annotations

import pytest

from meshserve.router.envoy.usage import Served, parse_line

SLOW = frozenset({"ms-slow-grpc", "ms-slow-rest"})


@pytest.mark.parametrize(
    ("line", "served"),
    [
        ("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 3",
         Served("m1", "grpc", "ModelInfer", "OK", 0.003)),
        ("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 3 1",
         Served("m1", "grpc", "ModelInfer", "INVALID_ARGUMENT", 0.001)),
        ("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelMetadata 503 - 0",
         Served("m1", "grpc", "ModelMetadata", "UNAVAILABLE", 0.0)),
        ("ms-rest-cd34 m2 /v2/models/m2/infer 200 - 12", Served("m2", "rest", "ModelInfer", "200", 0.012)),
        ("ms-rest-cd34 m2 /v2/models/m2/versions/1/infer?x=1 400 - 2", Served("m2", "rest", "ModelInfer", "400", 0.002)),
        ("ms-rest-cd34 m2 /v2/models/m2/ready 200 - 0", Served("m2", "rest", "ModelReady", "200", 0.0)),
        ("ms-rest-cd34 m2 /v2/models/m2 200 - 0", Served("m2", "rest", "ModelMetadata", "200", 0.0)),
    ],
)  # fmt: skip
def test_a_request_forwarded_to_a_pod_is_read_back(line: str, served: Served) -> None:
    assert parse_line(line, slow_clusters=SLOW) == served


@pytest.mark.parametrize(
    "line",
    [
        "ms-slow-grpc m1 /inference.GRPCInferenceService/ModelInfer 200 0 3",  # the Python router counted it
        "- - /inference.GRPCInferenceService/ModelInfer 404 5 0",  # no route at all
        "ms-grpc-ab12 - /inference.GRPCInferenceService/ModelInfer 200 0 3",  # no model id
        "ms-grpc-ab12 m1 /x 200 0 three",
        "garbage",
        "",
        "ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 3 extra",
    ],
)
def test_what_is_not_a_forwarded_request_is_skipped(line: str) -> None:
    assert parse_line(line, slow_clusters=SLOW) is None


def test_an_unknown_grpc_status_number_is_unknown() -> None:
    served = parse_line("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 99 1", slow_clusters=SLOW)
    assert served is not None and served.code == "UNKNOWN"
