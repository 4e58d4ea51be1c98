"""Envoy's access-log lines -> what it served (envoy/usage.py, pure)."""

from __future__ import annotations

import dataclasses

import pytest

from meshserve.router.envoy.usage import Served, parse_line

SLOW = frozenset({"ms-slow-grpc", "ms-slow-rest"})


@pytest.mark.parametrize(
    ("line", "served"),
    [
        ("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 3 120 80 2",
         Served("m1", "grpc", "ModelInfer", "OK", 0.003, 120, 80, 0.002)),
        ("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 3 1 120 80 2",
         Served("m1", "grpc", "ModelInfer", "INVALID_ARGUMENT", 0.001, 120, 80, 0.002)),
        ("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelMetadata 503 - 0 120 80 2",
         Served("m1", "grpc", "ModelMetadata", "UNAVAILABLE", 0.0, 120, 80, 0.002)),
        ("ms-rest-cd34 m2 /v2/models/m2/infer 200 - 12 120 80 2", Served("m2", "rest", "ModelInfer", "200", 0.012, 120, 80, 0.002)),
        ("ms-rest-cd34 m2 /v2/models/m2/versions/1/infer?x=1 400 - 2 120 80 2", Served("m2", "rest", "ModelInfer", "400", 0.002, 120, 80, 0.002)),
        ("ms-rest-cd34 m2 /v2/models/m2/ready 200 - 0 120 80 2", Served("m2", "rest", "ModelReady", "200", 0.0, 120, 80, 0.002)),
        ("ms-rest-cd34 m2 /v2/models/m2 200 - 0 120 80 2", Served("m2", "rest", "ModelMetadata", "200", 0.0, 120, 80, 0.002)),
    ],
)  # fmt: skip
def test_a_request_forwarded_to_a_pod_is_read_back(line: str, served: Served) -> None:
    assert parse_line(line, slow_clusters=SLOW) == dataclasses.replace(served, cluster=line.split()[0])


@pytest.mark.parametrize(
    "line",
    [
        "ms-slow-grpc m1 /inference.GRPCInferenceService/ModelInfer 200 0 3 120 80 2",  # the Python router counted it
        "- - /inference.GRPCInferenceService/ModelInfer 404 5 0 120 80 2",  # no route at all
        "ms-grpc-ab12 - /inference.GRPCInferenceService/ModelInfer 200 0 3 120 80 2",  # no model id
        "ms-grpc-ab12 m1 /x 200 0 three 120 80 2",
        "garbage",
        "",
        "ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 3 extra",
    ],
)
def test_what_is_not_a_forwarded_request_is_skipped(line: str) -> None:
    assert parse_line(line, slow_clusters=SLOW) is None


def test_an_unknown_grpc_status_number_is_unknown() -> None:
    served = parse_line("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 99 1 120 80 2", slow_clusters=SLOW)
    assert served is not None and served.code == "UNKNOWN"


def test_sizes_and_the_pods_share_are_read_and_may_be_missing() -> None:
    served = parse_line("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 7 1029 517 5", slow_clusters=SLOW)
    assert served == Served("m1", "grpc", "ModelInfer", "OK", 0.007, 1029, 517, 0.005, cluster="ms-grpc-ab12")
    # a request that never reached the pod has no upstream time
    served = parse_line("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 503 14 1 20 0 -", slow_clusters=SLOW)
    assert served is not None and served.code == "UNAVAILABLE" and served.upstream_seconds is None
    assert (served.request_bytes, served.response_bytes) == (20, 0)


def test_the_access_log_format_has_the_fields_parse_line_reads() -> None:
    from meshserve.router.envoy.resources import ACCESS_LOG_FORMAT

    assert len(ACCESS_LOG_FORMAT.split()) == 9
    assert "%BYTES_RECEIVED% %BYTES_SENT%" in ACCESS_LOG_FORMAT


def test_the_pod_address_and_the_vmodel_are_read_when_the_line_has_them() -> None:
    """What the access log (`access.py`) names: the pod Envoy picked and the vmodel asked for,
    as a 10th (%UPSTREAM_HOST%) and 11th field; `-` when Envoy has none."""
    base = "ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 7 1029 517 5"
    served = parse_line(f"{base} 10.0.0.7:8001 vm1", slow_clusters=SLOW)
    assert served is not None and (served.upstream_host, served.vmodel) == ("10.0.0.7:8001", "vm1")
    served = parse_line(f"{base} 10.0.0.7:8001 -", slow_clusters=SLOW)
    assert served is not None and (served.upstream_host, served.vmodel) == ("10.0.0.7:8001", None)
    served = parse_line(f"{base} -", slow_clusters=SLOW)
    assert served is not None and (served.upstream_host, served.vmodel, served.cluster) == (None, None, "ms-grpc-ab12")
    assert parse_line(f"{base} a b c", slow_clusters=SLOW) is None
