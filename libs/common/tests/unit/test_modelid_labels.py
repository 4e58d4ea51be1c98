from __future__ import annotations

import grpc

from meshserve.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    from_grpc,
    http_status_for,
)
from meshserve.common.labels import (
    SupportedFormat,
    model_labels,
    parse_formats,
    runtime_labels,
    runtime_spec_from_labels,
)
from meshserve.common.modelid import model_id, spec_hash


def test_model_id_shape_and_stability() -> None:
    spec = {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p"}
    mid = model_id(name="example", source="isvc", spec=spec)
    assert mid.startswith("example__isvc-") and len(mid.split("-")[-1]) == 10
    assert mid == model_id(name="example", source="isvc", spec=dict(reversed(list(spec.items()))))
    assert mid != model_id(name="example", source="isvc", spec={**spec, "storageUri": "s3://b/q"})
    assert spec_hash("abc") == spec_hash(b"abc")


def test_labels_match_like_modelmesh() -> None:
    pod = runtime_labels(
        runtime="mlserver-1.x",
        formats=[SupportedFormat("sklearn", "0", True), SupportedFormat("xgboost", "1", False)],
        protocol_versions=["grpc-v2"],
    )
    assert pod == {"rt:mlserver-1.x", "mt:sklearn", "mt:sklearn:0", "pv:grpc-v2"}
    assert model_labels(model_type="sklearn") <= pod
    assert model_labels(model_type="sklearn", model_type_version="0", protocol_version="grpc-v2") <= pod
    assert not model_labels(model_type="xgboost") <= pod  # not auto-selected
    assert model_labels(model_type="xgboost", runtime="mlserver-1.x") <= pod  # explicit runtime
    assert not model_labels(model_type="sklearn", runtime="triton-2.x") <= pod


def test_parse_formats() -> None:
    assert parse_formats("sklearn:0, xgboost") == [SupportedFormat("sklearn", "0", True), SupportedFormat("xgboost", None, True)]


def test_runtime_spec_from_labels_inverts_runtime_labels() -> None:
    formats = [SupportedFormat("sklearn", "0", True), SupportedFormat("xgboost", None, True), SupportedFormat("onnx", "1")]
    labels = runtime_labels(runtime="mlserver-1.x", formats=formats, protocol_versions=["grpc-v2", "v2"])
    assert runtime_spec_from_labels(labels) == {
        "supportedModelFormats": ["sklearn:0", "xgboost"],   # onnx is not auto-selected: no label
        "protocolVersions": ["grpc-v2", "v2"],
    }
    assert runtime_spec_from_labels([]) == {"supportedModelFormats": [], "protocolVersions": []}


def test_error_mapping_round_trip() -> None:
    assert isinstance(from_grpc(grpc.StatusCode.NOT_FOUND, "x"), NotFound)
    assert isinstance(from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "x"), InvalidArgument)
    assert from_grpc(grpc.StatusCode.FAILED_PRECONDITION, "why").message == "why"
    assert isinstance(from_grpc(grpc.StatusCode.FAILED_PRECONDITION, "x"), FailedPrecondition)
    assert http_status_for(grpc.StatusCode.NOT_FOUND) == 404
    assert http_status_for(grpc.StatusCode.UNAVAILABLE) == 503
    assert http_status_for(grpc.StatusCode.DATA_LOSS) == 500
