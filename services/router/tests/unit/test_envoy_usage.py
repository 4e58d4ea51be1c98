"""Envoy's access-log lines -> what it served (envoy/usage.py, pure)."""

from __future__ import annotations

import dataclasses

import pytest

from meshserve.router.envoy.usage import Served, parse_line

SLOW = frozenset({"ms-slow-grpc", "ms-slow-rest"})
POD = "10.0.0.7:8001"


def line(fields: str, host: str = POD, vmodel: str = "-") -> str:
    """ACCESS_LOG_FORMAT's first nine fields + the upstream host and the vmodel."""
    return f"{fields} {host} {vmodel}"


@pytest.mark.parametrize(
    ("fields", "served"),
    [
        ("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 3000 120 80 2000",
         Served("m1", "grpc", "ModelInfer", "OK", 0.003, 120, 80, 0.002)),
        ("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 3 1000 120 80 2000",
         Served("m1", "grpc", "ModelInfer", "INVALID_ARGUMENT", 0.001, 120, 80, 0.002)),
        ("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelMetadata 503 - 0 120 80 2000",
         Served("m1", "grpc", "ModelMetadata", "UNAVAILABLE", 0.0, 120, 80, 0.002)),
        ("ms-rest-cd34 m2 /v2/models/m2/infer 200 - 12000 120 80 2000", Served("m2", "rest", "ModelInfer", "200", 0.012, 120, 80, 0.002)),
        ("ms-rest-cd34 m2 /v2/models/m2/versions/1/infer?x=1 400 - 2000 120 80 2000", Served("m2", "rest", "ModelInfer", "400", 0.002, 120, 80, 0.002)),
        ("ms-rest-cd34 m2 /v2/models/m2/ready 200 - 0 120 80 2000", Served("m2", "rest", "ModelReady", "200", 0.0, 120, 80, 0.002)),
        ("ms-rest-cd34 m2 /v2/models/m2 200 - 0 120 80 2000", Served("m2", "rest", "ModelMetadata", "200", 0.0, 120, 80, 0.002)),
    ],
)  # fmt: skip
def test_a_request_forwarded_to_a_pod_is_read_back(fields: str, served: Served) -> None:
    expected = dataclasses.replace(served, cluster=fields.split()[0], upstream_host=POD)
    assert parse_line(line(fields), slow_clusters=SLOW) == expected


def test_durations_are_read_in_microseconds() -> None:
    """The router's latency buckets start at 0.5 ms: a 0.7 ms request must not read as 0."""
    served = parse_line(line("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 734 120 80 512"), slow_clusters=SLOW)
    assert served is not None and served.seconds == pytest.approx(0.000734)
    assert served.upstream_seconds == pytest.approx(0.000512)


@pytest.mark.parametrize(
    "text",
    [
        line("ms-slow-grpc m1 /inference.GRPCInferenceService/ModelInfer 200 0 3 120 80 2"),  # the Python router counted it
        line("- - /inference.GRPCInferenceService/ModelInfer 404 5 0 120 80 2", host="-"),  # no route at all
        line("ms-grpc-ab12 - /inference.GRPCInferenceService/ModelInfer 200 0 3 120 80 2"),  # no model id
        line("ms-grpc-ab12 m1 /x 200 0 three 120 80 2"),
        "garbage",
        "",
        "ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 3 120 80 2",  # too few fields
        line("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 3 120 80 2") + " extra",
    ],
)
def test_what_is_not_a_forwarded_request_is_skipped(text: str) -> None:
    assert parse_line(text, slow_clusters=SLOW) is None


def test_a_request_the_failover_cluster_gave_to_the_slow_path_is_skipped() -> None:
    """The aggregate cluster's second priority is the Python router, which counts it itself."""
    fields = "ms-grpc-ab12-or-slow m1 /inference.GRPCInferenceService/ModelInfer 200 0 3 120 80 2"
    assert parse_line(line(fields, host="127.0.0.1:9033"), slow_clusters=SLOW, slow_hosts=frozenset({"127.0.0.1:9033"})) is None
    assert parse_line(line(fields), slow_clusters=SLOW, slow_hosts=frozenset({"127.0.0.1:9033"})) is not None


def test_an_unknown_grpc_status_number_is_unknown() -> None:
    served = parse_line(line("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 99 1 120 80 2"), slow_clusters=SLOW)
    assert served is not None and served.code == "UNKNOWN"


def test_sizes_and_the_pods_share_are_read_and_may_be_missing() -> None:
    served = parse_line(line("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 7000 1029 517 5000"), slow_clusters=SLOW)
    assert served == Served("m1", "grpc", "ModelInfer", "OK", 0.007, 1029, 517, 0.005, cluster="ms-grpc-ab12", upstream_host=POD)
    # a request that never reached the pod has no upstream time
    served = parse_line(line("ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 503 14 1 20 0 -", host="-"), slow_clusters=SLOW)
    assert served is not None and served.code == "UNAVAILABLE" and served.upstream_seconds is None
    assert (served.request_bytes, served.response_bytes, served.upstream_host) == (20, 0, None)


def test_the_access_log_format_has_the_fields_parse_line_reads() -> None:
    from meshserve.router.envoy.resources import ACCESS_LOG_FORMAT

    fields = ACCESS_LOG_FORMAT.split()
    assert len(fields) == 11
    assert fields[7:] == ["%BYTES_SENT%", "%COMMON_DURATION(US_TX_BEG:US_RX_END:us)%", "%UPSTREAM_HOST%",
                          "%DYNAMIC_METADATA(meshserve:vmodel)%"]  # fmt: skip


def test_the_pod_address_and_the_vmodel_are_read() -> None:
    """What the access log (`access.py`) names: the host Envoy picked and the vmodel asked
    for (%UPSTREAM_HOST%, route.lua's meshserve.vmodel); `-` when Envoy has none."""
    base = "ms-grpc-ab12 m1 /inference.GRPCInferenceService/ModelInfer 200 0 7 1029 517 5"
    served = parse_line(line(base, vmodel="vm1"), slow_clusters=SLOW)
    assert served is not None and (served.upstream_host, served.vmodel) == (POD, "vm1")
    served = parse_line(line(base), slow_clusters=SLOW)
    assert served is not None and (served.upstream_host, served.vmodel) == (POD, None)
