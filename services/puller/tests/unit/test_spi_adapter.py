"""The runtime-SPI adapter's pure parts: endpoints, the forwarded model key, what a
runtime's status means for the puller, error mapping, and that proto/mmesh/model-runtime.proto
is upstream's contract on the wire (names and field numbers copied from kserve/modelmesh
src/main/proto/current/model-runtime.proto)."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F
from google.protobuf.descriptor_pb2 import FileDescriptorProto

from meshserve.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from meshserve.common.proto.mmesh import model_runtime_pb2 as pb
from meshserve.puller.spi_adapter import RuntimeInfo, forwarded_model_key, grpc_target, load_error

# upstream: message -> {field: (number, type, repeated)}
UPSTREAM_MESSAGES: dict[str, dict[str, tuple[int, int, bool]]] = {
    "LoadModelRequest": {"modelId": (1, F.TYPE_STRING, False), "modelType": (2, F.TYPE_STRING, False),
                         "modelPath": (3, F.TYPE_STRING, False), "modelKey": (4, F.TYPE_STRING, False)},
    "LoadModelResponse": {"sizeInBytes": (1, F.TYPE_UINT64, False), "maxConcurrency": (2, F.TYPE_UINT32, False)},
    "UnloadModelRequest": {"modelId": (1, F.TYPE_STRING, False)},
    "UnloadModelResponse": {},
    "PredictModelSizeRequest": {"modelId": (1, F.TYPE_STRING, False), "modelType": (2, F.TYPE_STRING, False),
                                "modelPath": (3, F.TYPE_STRING, False), "modelKey": (4, F.TYPE_STRING, False)},
    "PredictModelSizeResponse": {"sizeInBytes": (1, F.TYPE_UINT64, False)},
    "ModelSizeRequest": {"modelId": (1, F.TYPE_STRING, False)},
    "ModelSizeResponse": {"sizeInBytes": (1, F.TYPE_UINT64, False)},
    "RuntimeStatusRequest": {},
    "RuntimeStatusResponse": {
        "status": (1, F.TYPE_ENUM, False), "capacityInBytes": (2, F.TYPE_UINT64, False),
        "maxLoadingConcurrency": (3, F.TYPE_UINT32, False), "modelLoadingTimeoutMs": (4, F.TYPE_UINT32, False),
        "defaultModelSizeInBytes": (5, F.TYPE_UINT64, False), "runtimeVersion": (6, F.TYPE_STRING, False),
        "numericRuntimeVersion": (7, F.TYPE_UINT64, False), "methodInfos": (8, F.TYPE_MESSAGE, True),
        "limitModelConcurrency": (9, F.TYPE_BOOL, False), "allowAnyMethod": (10, F.TYPE_BOOL, False),
    },
}
UPSTREAM_RPCS = {
    "loadModel": ("LoadModelRequest", "LoadModelResponse"),
    "unloadModel": ("UnloadModelRequest", "UnloadModelResponse"),
    "predictModelSize": ("PredictModelSizeRequest", "PredictModelSizeResponse"),
    "modelSize": ("ModelSizeRequest", "ModelSizeResponse"),
    "runtimeStatus": ("RuntimeStatusRequest", "RuntimeStatusResponse"),
}


FILE = FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
MESSAGES = {m.name: m for m in FILE.message_type}


def test_the_package_service_and_rpcs_are_upstreams() -> None:
    assert FILE.package == "mmesh" and FILE.syntax == "proto3"
    service = pb.DESCRIPTOR.services_by_name["ModelRuntime"]
    assert service.full_name == "mmesh.ModelRuntime"
    got = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert got == UPSTREAM_RPCS
    assert all(not m.client_streaming and not m.server_streaming for m in service.methods)


@pytest.mark.parametrize("message", sorted(UPSTREAM_MESSAGES))
def test_every_message_has_upstreams_fields_and_numbers(message: str) -> None:
    got = {f.name: (f.number, f.type, f.label == F.LABEL_REPEATED) for f in MESSAGES[message].field}
    assert got == UPSTREAM_MESSAGES[message]


def test_status_enum_and_method_info_are_upstreams() -> None:
    response = MESSAGES["RuntimeStatusResponse"]
    [status] = response.enum_type
    assert status.name == "Status"
    assert {v.name: v.number for v in status.value} == {"STARTING": 0, "READY": 1, "FAILING": 2}
    nested = {m.name: m for m in response.nested_type}
    [path] = nested["MethodInfo"].field
    assert (path.name, path.number, path.type, path.label) == ("idInjectionPath", 1, F.TYPE_UINT32, F.LABEL_REPEATED)
    entry = nested["MethodInfosEntry"]
    assert entry.options.map_entry
    assert {f.name: (f.number, f.type, f.type_name) for f in entry.field} == {
        "key": (1, F.TYPE_STRING, ""), "value": (2, F.TYPE_MESSAGE, ".mmesh.RuntimeStatusResponse.MethodInfo")
    }


def test_bytes_on_the_wire() -> None:
    # field 1 varint 300; field 2 varint 4
    assert pb.LoadModelResponse(sizeInBytes=300, maxConcurrency=4).SerializeToString() == b"\x08\xac\x02\x10\x04"
    assert pb.LoadModelRequest(modelId="m", modelKey="{}").SerializeToString() == b"\x0a\x01m\x22\x02{}"


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        pytest.param("port:8085", "127.0.0.1:8085", id="port"),
        pytest.param(" port:1 ", "127.0.0.1:1", id="port-spaces"),
        pytest.param("unix:/tmp/mmesh/grpc.sock", "unix:/tmp/mmesh/grpc.sock", id="unix"),
        pytest.param("unix:///tmp/mmesh/grpc.sock", "unix:///tmp/mmesh/grpc.sock", id="unix-url"),
        pytest.param("127.0.0.1:9000", "127.0.0.1:9000", id="host-port"),
        pytest.param("dns:///runtime:9000", "dns:///runtime:9000", id="dns"),
    ],
)
def test_endpoints_become_grpc_targets(endpoint: str, target: str) -> None:
    assert grpc_target(endpoint) == target


@pytest.mark.parametrize("endpoint", ["", "port:", "port:0", "port:65536", "port:http", "unix:", "unix:///", "localhost"])
def test_bad_endpoints_are_refused_with_the_forms(endpoint: str) -> None:
    with pytest.raises(InvalidArgument, match="runtime endpoint"):
        grpc_target(endpoint)


def test_the_forwarded_key_drops_storage_fields_and_says_the_bytes_on_disk() -> None:
    key = {
        "storage_key": "localMinIO",
        "storage_params": {"type": "s3", "bucket": "b"},
        "bucket": "old",
        "schema_path": "schemas/s.json",
        "model_type": {"name": "linear-json", "version": "1"},
        "extra": 1,
    }
    out = json.loads(forwarded_model_key(json.dumps(key), disk_bytes=123))
    assert out == {"model_type": {"name": "linear-json", "version": "1"}, "extra": 1, "disk_size_bytes": 123}


def test_the_forwarded_key_of_an_empty_key_has_the_size_only() -> None:
    assert json.loads(forwarded_model_key("", disk_bytes=0)) == {"disk_size_bytes": 0}


@pytest.mark.parametrize("key", ["not json", "[1, 2]"])
def test_a_key_that_is_not_a_json_object_is_refused(key: str) -> None:
    with pytest.raises(InvalidArgument):
        forwarded_model_key(key, disk_bytes=1)


def _status(**fields: object) -> pb.RuntimeStatusResponse:
    return pb.RuntimeStatusResponse(status=pb.RuntimeStatusResponse.READY, **fields)  # type: ignore[arg-type]


def test_the_runtimes_limits_replace_the_pullers() -> None:
    info = RuntimeInfo.from_response(_status(
        capacityInBytes=1 << 30, maxLoadingConcurrency=3, modelLoadingTimeoutMs=45_500, defaultModelSizeInBytes=7,
        runtimeVersion="v9", numericRuntimeVersion=9,
    ))
    assert info.runtime_version == "v9" and info.numeric_runtime_version == 9
    assert info.puller_overrides() == {
        "capacity_bytes": 1 << 30, "max_loading_concurrency": 3, "load_timeout_seconds": 45.5,
        "default_model_size_bytes": 7,
    }


def test_limits_the_runtime_left_at_zero_keep_the_pullers() -> None:
    assert RuntimeInfo.from_response(_status()).puller_overrides() == {}
    assert RuntimeInfo.from_response(_status(maxLoadingConcurrency=2)).puller_overrides() == {"max_loading_concurrency": 2}


def test_method_infos_are_read_and_what_meshserve_cannot_honour_is_named() -> None:
    v2 = pb.RuntimeStatusResponse.MethodInfo(idInjectionPath=[1])
    deep = pb.RuntimeStatusResponse.MethodInfo(idInjectionPath=[1, 1])
    info = RuntimeInfo.from_response(_status(
        methodInfos={"inference.GRPCInferenceService/ModelInfer": v2, "tensorflow.serving.PredictionService/Predict": deep},
        limitModelConcurrency=True,
    ))
    assert info.method_infos == {
        "inference.GRPCInferenceService/ModelInfer": (1,), "tensorflow.serving.PredictionService/Predict": (1, 1)
    }
    notes = info.unused()
    assert any("limitModelConcurrency" in n for n in notes)
    assert any("tensorflow.serving.PredictionService/Predict" in n for n in notes)
    assert not any("ModelInfer" in n for n in notes)
    plain = RuntimeInfo.from_response(_status(methodInfos={"inference.GRPCInferenceService/ModelInfer": v2}))
    assert plain.unused() == []


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.FAILED_PRECONDITION,
     grpc.StatusCode.UNKNOWN, grpc.StatusCode.NOT_FOUND],
)
def test_a_refused_or_failed_load_is_the_models_fault_with_the_runtimes_message(code: grpc.StatusCode) -> None:
    err = load_error(_rpc_error(code, "weights.json: bias has 3 values"), runtime="the runtime", model_id="m1", timeout=30)
    assert type(err) is FailedPrecondition
    assert err.status == "FAILED_PRECONDITION"
    assert "weights.json: bias has 3 values" in err.message and "m1" in err.message


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.CANCELLED, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
    ],
)
def test_the_pods_faults_stay_the_pods(code: grpc.StatusCode, cls: type) -> None:
    err = load_error(_rpc_error(code, "x"), runtime="the runtime", model_id="m1", timeout=30)
    assert type(err) is cls


def test_an_unimplemented_load_keeps_its_code() -> None:
    err = load_error(_rpc_error(grpc.StatusCode.UNIMPLEMENTED, "no"), runtime="rt", model_id="m1", timeout=1)
    assert err.status == "UNIMPLEMENTED" and "rt could not load m1" in err.message
