"""The router's two front doors with unmodified clients: tritonclient.grpc and
tritonclient.http for every KServe v2 RPC, many models by vmodel and by header,
concurrent cold requests, bad input, and per-model metrics."""

from __future__ import annotations

import concurrent.futures

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.cli.devstack import Stack

from .conftest import IRIS_URI, MNIST_INPUT, MNIST_URI, mnist_inputs, wait_for

pytestmark = pytest.mark.integration
IRIS_BATCH = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


@pytest.fixture
def rest(stack: Stack):  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(stack.router_rest.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


def http_inputs(data: np.ndarray, *, binary: bool) -> list[httpclient.InferInput]:
    inp = httpclient.InferInput("predict", list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=binary)
    return [inp]


def _events(stack: Stack, model_id: str, kind: str) -> list[dict[str, object]]:
    items = stack.admin("GET", f"/v1/events?model={model_id}&limit=1000").json()["items"]
    return [e for e in items if e["kind"] == kind]


def test_every_rpc_with_tritonclient_grpc(stack: Stack, triton: grpcclient.InferenceServerClient, unique: str) -> None:
    name = f"rgrpc-{unique}"
    assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.get_server_metadata().name == "meshserve"
    assert triton.is_model_ready(name)
    assert triton.get_model_metadata(name).name == name
    result = triton.infer(name, mnist_inputs(IRIS_BATCH))
    assert result.as_numpy("predict").ravel().tolist() == [0, 2]
    assert result.get_response().model_name == name


@pytest.mark.parametrize("binary", [pytest.param(False, id="json"), pytest.param(True, id="binary-outputs")])
def test_every_rpc_with_tritonclient_http(stack: Stack, rest: httpclient.InferenceServerClient, unique: str, binary: bool) -> None:
    name = f"rhttp-{unique}"
    assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    assert rest.is_server_live() and rest.is_server_ready()
    assert rest.get_server_metadata()["name"] == "meshserve"
    assert rest.is_model_ready(name)
    assert rest.get_model_metadata(name)["name"] == name
    outputs = [httpclient.InferRequestedOutput("predict", binary_data=binary)]
    result = rest.infer(name, http_inputs(IRIS_BATCH, binary=False), outputs=outputs)
    assert result.as_numpy("predict").ravel().tolist() == [0, 2]
    assert result.get_response()["model_name"] == name


def test_binary_input_tensors_are_a_clear_400(stack: Stack, rest: httpclient.InferenceServerClient, unique: str) -> None:
    name = f"rbin-{unique}"
    assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    with pytest.raises(InferenceServerException) as err:
        rest.infer(name, http_inputs(IRIS_BATCH, binary=True))
    assert err.value.status() == "400" and "binary_data=False" in err.value.message()


def test_rest_health_endpoints_and_ids(stack: Stack, unique: str) -> None:
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(f"{stack.router_rest}{path}").status_code == 200, path
    name = f"rver-{unique}"
    assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    body = {"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]}
    response = httpx.post(f"{stack.router_rest}/v2/models/{name}/infer", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["mm-model-id"] == name
    assert response.json()["outputs"][0]["data"] == [0]
    missing_version = httpx.get(f"{stack.router_rest}/v2/models/{name}/versions/v9/ready", timeout=60)
    assert missing_version.status_code == 404 and "v9" in missing_version.json()["error"]


def test_six_models_by_vmodel_name_and_by_header(stack: Stack, triton: grpcclient.InferenceServerClient, rest: httpclient.InferenceServerClient, unique: str) -> None:
    cases = []
    for i in range(6):
        model, vmodel = f"many{i}-{unique}", f"vm{i}-{unique}"
        uri, data, expected = (IRIS_URI, IRIS_BATCH, [0, 2]) if i % 2 else (MNIST_URI, MNIST_INPUT, [8])
        assert stack.register(model, storage_uri=uri).status_code == 201
        response = stack.admin("PUT", f"/v1/vmodels/{vmodel}", json={"targetModelId": model})
        assert response.status_code in (200, 201), response.text
        cases.append((model, vmodel, data, expected))
    for model, vmodel, data, expected in cases:
        by_name = triton.infer(vmodel, mnist_inputs(data))
        assert by_name.as_numpy("predict").ravel().tolist() == expected
        assert by_name.get_response().model_name == model  # the served model id
        by_header = triton.infer("ignored", mnist_inputs(data), headers={"mm-vmodel-id": vmodel})
        assert by_header.as_numpy("predict").ravel().tolist() == expected
        over_rest = rest.infer(vmodel, http_inputs(data, binary=False))
        assert over_rest.as_numpy("predict").ravel().tolist() == expected
        assert over_rest.get_response()["model_name"] == model
        rest_header = rest.infer("ignored", http_inputs(data, binary=False), headers={"mm-vmodel-id": vmodel})
        assert rest_header.as_numpy("predict").ravel().tolist() == expected
        assert triton.get_model_metadata("ignored", headers={"mm-model-id": model}).name == model


def test_both_routing_headers_at_once_is_invalid(triton: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        triton.infer("x", mnist_inputs(), headers={"mm-vmodel-id": "a", "mm-model-id": "b"})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_concurrent_cold_requests_over_both_doors_cause_one_load(stack: Stack, unique: str) -> None:
    name = f"rcold-{unique}"
    assert stack.register(name, storage_uri=MNIST_URI).status_code == 201
    body = {"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32", "data": MNIST_INPUT.ravel().tolist()}]}

    def over_grpc() -> list[int]:
        client = grpcclient.InferenceServerClient(stack.router_grpc)
        try:
            return client.infer(name, mnist_inputs()).as_numpy("predict").ravel().tolist()
        finally:
            client.close()

    def over_rest() -> list[int]:
        response = httpx.post(f"{stack.router_rest}/v2/models/{name}/infer", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return list(response.json()["outputs"][0]["data"])

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(over_grpc if i % 2 else over_rest) for i in range(16)]
        results = [f.result() for f in futures]
    assert results == [[8]] * 16
    assert len(_events(stack, name, "placed")) == 1


def test_garbage_bytes_over_raw_grpc_are_invalid_argument(stack: Stack) -> None:
    with grpc.insecure_channel(stack.router_grpc) as channel:
        for method in ("ModelInfer", "ModelMetadata", "ModelReady"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            for garbage in (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0a\x40short", b"\x0b"):
                with pytest.raises(grpc.RpcError) as err:
                    call(garbage, timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, garbage)
        # and the router still serves
        assert grpcclient.InferenceServerClient(stack.router_grpc).is_server_live()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        pytest.param(b"{bad json", "JSON", id="malformed-json"),
        pytest.param(b"\xff\xfe\x00garbage", "", id="not-utf8"),
        pytest.param(b'{"inputs": "x"}', "inputs", id="inputs-not-a-list"),
        pytest.param(b'{"inputs":[{"name":"predict","shape":[1,64],"datatype":"FP32","data":[1,2]}]}', "", id="shape-vs-data"),
        pytest.param(b'{"inputs":[{"name":"predict","shape":[1,63],"datatype":"FP32","data":' + str([1.0] * 63).encode() + b"}]}", "features", id="63-features"),
        pytest.param(b'{"inputs":[{"name":"predict","shape":[1,2],"datatype":"FP32","data":["a","b"]}]}', "could not convert string to float", id="strings-for-floats"),
    ],
)
def test_bad_rest_bodies_are_400_with_a_reason(stack: Stack, body: bytes, needle: str) -> None:
    name = "example-sklearn-isvc"
    if stack.admin("GET", f"/v1/models/{name}").status_code == 404:
        assert stack.register(name, storage_uri=MNIST_URI, storageKey="localMinIO").status_code == 201
    response = httpx.post(
        f"{stack.router_rest}/v2/models/{name}/infer", content=body, headers={"content-type": "application/json"}, timeout=120
    )
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def test_rest_unknown_model_is_404_and_wrong_method_405(stack: Stack) -> None:
    response = httpx.post(f"{stack.router_rest}/v2/models/no-such-model/infer", json={"inputs": []}, timeout=30)
    assert response.status_code == 404 and "no-such-model" in response.json()["error"]
    assert httpx.get(f"{stack.router_rest}/v2/models/no-such-model/infer").status_code == 405
    assert httpx.get(f"{stack.router_rest}/v2/nothing-here").status_code == 404


def test_rest_load_failure_is_412_with_the_recorded_reason(stack: Stack, unique: str) -> None:
    name = f"rmissing-{unique}"
    assert stack.register(name, storage_uri=f"s3://modelmesh-example-models/nope/{unique}.joblib").status_code == 201
    response = httpx.post(f"{stack.router_rest}/v2/models/{name}/infer", json={"inputs": []}, timeout=120)
    assert response.status_code in (412, 503), response.text
    assert f"nope/{unique}.joblib" in response.json()["error"]


def test_per_model_request_counters_on_metrics(stack: Stack, triton: grpcclient.InferenceServerClient, rest: httpclient.InferenceServerClient, unique: str) -> None:
    name = f"rmetrics-{unique}"
    assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    for _ in range(3):
        triton.infer(name, mnist_inputs(IRIS_BATCH))
    rest.infer(name, http_inputs(IRIS_BATCH, binary=False))
    grpc_ok = f'meshserve_router_requests_total{{code="OK",method="ModelInfer",model="{name}",protocol="grpc"}} 3.0'
    rest_ok = f'meshserve_router_requests_total{{code="200",method="ModelInfer",model="{name}",protocol="rest"}} 1.0'
    # with MESHSERVE_ROUTER_DATA_PATH=envoy, what Envoy forwarded is counted from its access log, a moment later
    def counted() -> str:
        text = httpx.get(f"{stack.router_rest}/metrics").text
        return text if grpc_ok in text and rest_ok in text else ""

    text = wait_for(counted, what="the request counters")
    assert "meshserve_router_request_seconds_bucket" in text
