"""ModelStreamInfer through the router (MLServer's streaming shape)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from meshserve.cli.devstack import Stack
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2g

from .conftest import IRIS_URI

pytestmark = pytest.mark.integration


def _request(name: str) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=name)
    tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(np.array([5.1, 3.5, 1.4, 0.2], dtype=np.float32).tolist())
    return request


def test_stream_for_an_unknown_model_is_not_found(stack: Stack) -> None:
    with grpc.insecure_channel(stack.router_grpc) as channel:
        stub = v2g.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ModelStreamInfer(iter([_request("no-such-stream-model")]), timeout=30))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-stream-model" in (err.value.details() or "")


def test_stream_reaches_the_model_server_with_the_model_loaded(stack: Stack, unique: str) -> None:
    """The sklearn runtime does not implement predict_stream, so MLServer answers with its
    own error: that error must come back (not a router error), and the model was loaded
    and addressed by its id on the way."""
    name = f"stream-{unique}"
    assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    with grpc.insecure_channel(stack.router_grpc) as channel:
        stub = v2g.GRPCInferenceServiceStub(channel)
        try:
            replies = list(stub.ModelStreamInfer(iter([_request(name), _request(name)]), timeout=60))
        except grpc.RpcError as err:
            assert err.code() != grpc.StatusCode.NOT_FOUND, err.details()
            assert "router" not in (err.details() or "").lower(), err.details()
        else:  # a runtime that streams answers each request
            assert replies and all(r.model_name == name for r in replies)
    assert stack.admin("GET", f"/v1/models/{name}").json()["state"] == "Loaded"
