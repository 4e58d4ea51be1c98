"""Model-server statuses as the client should see them."""

from __future__ import annotations

import grpc
import pytest

from meshserve.router.upstream_errors import client_status

INFER = "/inference.GRPCInferenceService/ModelInfer"
META = "/inference.GRPCInferenceService/ModelMetadata"


@pytest.mark.parametrize(
    "details",
    [
        "X has 63 features, but SVC is expecting 64 features as input.",
        "cannot reshape array of size 3 into shape (1,4)",
        "could not convert string to float: 'a'",
        "Unsupported datatype FOO",
        "builtins.ValueError: bad",
        "unpack requires a buffer of 32 bytes",  # raw contents shorter than the shape (found by tests/fuzz)
    ],
)
def test_mlserver_input_errors_on_infer_are_invalid_argument(details: str) -> None:
    assert client_status(INFER, grpc.StatusCode.INTERNAL, details) == grpc.StatusCode.INVALID_ARGUMENT


def test_other_internal_errors_pass_through() -> None:
    assert client_status(INFER, grpc.StatusCode.INTERNAL, "out of memory") == grpc.StatusCode.INTERNAL
    assert client_status(INFER, grpc.StatusCode.INTERNAL, "") == grpc.StatusCode.INTERNAL


def test_only_model_infer_is_remapped() -> None:
    assert client_status(META, grpc.StatusCode.INTERNAL, "cannot reshape array") == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_non_internal_codes_are_unchanged(code: grpc.StatusCode) -> None:
    assert client_status(INFER, code, "cannot reshape array") == code


@pytest.mark.parametrize("method", [INFER, META])
def test_a_request_the_model_server_cannot_parse_is_invalid_argument(method: str) -> None:
    # found by tests/fuzz: a nested message broken in the bytes passes the router's top-level walk
    details = "Unexpected <class 'google.protobuf.message.DecodeError'>: Error parsing message with type 'inference.ModelInferRequest'"
    assert client_status(method, grpc.StatusCode.UNKNOWN, details) == grpc.StatusCode.INVALID_ARGUMENT
    assert client_status(method, grpc.StatusCode.UNKNOWN, "Unexpected ModelNotFound") == grpc.StatusCode.UNKNOWN


def test_stream_infer_is_remapped_like_infer() -> None:
    # found by tests/fuzz: MLServer's stream answers a bad tensor with INTERNAL too
    stream = "/inference.GRPCInferenceService/ModelStreamInfer"
    assert client_status(stream, grpc.StatusCode.INTERNAL, "cannot reshape array of size 4") == grpc.StatusCode.INVALID_ARGUMENT


def test_a_stream_message_the_model_server_cannot_parse_is_invalid_argument() -> None:
    # found by tests/fuzz: on ModelStreamInfer grpc's server says INTERNAL, not UNKNOWN
    stream = "/inference.GRPCInferenceService/ModelStreamInfer"
    details = "Error parsing message with type 'inference.ModelInferRequest'"
    assert client_status(stream, grpc.StatusCode.INTERNAL, details) == grpc.StatusCode.INVALID_ARGUMENT
