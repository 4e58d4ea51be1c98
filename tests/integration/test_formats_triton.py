"""The real Triton Inference Server (nvidia-pytriton's tritonserver 2.51, python backend
only) as a runtime pod: the puller lays out the repository entry, writes config.pbtxt and
loads through Triton's repository API; the router forwards KServe v2 calls to it. Formats
with no native backend in this installation are served by meshserve's python-backend model
with the native backend's input and output names. Answers are compared with the model run
directly by its own library in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig

from .conftest import EXAMPLES, direct_onnx, example_input, infer_one

pytestmark = pytest.mark.integration

ONNX_URI = f"s3://{EXAMPLE_BUCKET}/onnx/mnist.onnx"


@pytest.fixture(scope="module")
def tstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(StackConfig.from_env(Path(tmp_path_factory.mktemp("triton-stack")), pods=0, isolate=True))
    try:
        s.start()
        s.upload_examples(EXAMPLES)
        pod = s.start_triton_pod()
        s.wait_for_pods([pod])
        yield s
    finally:
        s.stop()


@pytest.fixture
def client(tstack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(tstack.router_grpc)
    yield c
    c.close()


def _onnx_input() -> np.ndarray:
    return example_input("onnx-mnist.json")


def _infer_onnx(client: grpcclient.InferenceServerClient, name: str, data: np.ndarray) -> np.ndarray:
    return infer_one(client, name, data, inp="Input3", out="Plus214_Output_0")


def test_onnx_is_served_by_triton_like_onnxruntime(tstack: Stack, client: grpcclient.InferenceServerClient, unique: str) -> None:
    name = f"onnx-{unique}"
    assert tstack.register(name, storage_uri=ONNX_URI, format="onnx").status_code == 201
    data = _onnx_input()
    got = _infer_onnx(client, name, data)
    want = direct_onnx(EXAMPLES / "onnx" / "mnist.onnx", data)
    assert got.shape == (1, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the names and types the native onnxruntime backend would expose
    metadata = client.get_model_metadata(name, as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("Input3", "FP32", ["1", "1", "28", "28"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [("Plus214_Output_0", "FP32", ["1", "10"])]
    model = tstack.admin("GET", f"/v1/models/{name}").json()
    assert model["state"] == "Loaded"
    assert model["copies"][0]["pod"].startswith("triton-")


def test_a_triton_layout_with_the_users_config_is_kept_and_renamed(
    tstack: Stack, client: grpcclient.InferenceServerClient, unique: str
) -> None:
    """Upstream's Triton layout: `<name>/config.pbtxt` + `1/model.onnx`; the user's config
    names another model and sets max_batch_size 0; only the name changes."""
    s3 = tstack.s3_client()
    prefix = f"triton-layout/{unique}"
    s3.upload_file(str(EXAMPLES / "onnx" / "mnist.onnx"), EXAMPLE_BUCKET, f"{prefix}/1/model.onnx")
    config = 'name: "mnist-from-the-zoo"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    s3.put_object(Bucket=EXAMPLE_BUCKET, Key=f"{prefix}/config.pbtxt", Body=config.encode())
    name = f"layout-{unique}"
    assert tstack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{prefix}", format="onnx").status_code == 201
    data = _onnx_input()
    np.testing.assert_allclose(_infer_onnx(client, name, data), direct_onnx(EXAMPLES / "onnx" / "mnist.onnx", data), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"model.onnx": b"\x08\x07not an onnx graph"}, "onnx"),
        ({"config.pbtxt": b"name: [unclosed", "1/model.onnx": None}, "config.pbtxt does not parse"),
    ],
    ids=["truncated-onnx", "bad-config"],
)
def test_files_triton_cannot_read_fail_with_the_reason_and_the_pod_keeps_serving(
    tstack: Stack, client: grpcclient.InferenceServerClient, unique: str, files: dict[str, bytes | None], needle: str
) -> None:
    s3 = tstack.s3_client()
    prefix = f"triton-broken/{unique}"
    for key, body in files.items():
        if body is None:
            s3.upload_file(str(EXAMPLES / "onnx" / "mnist.onnx"), EXAMPLE_BUCKET, f"{prefix}/{key}")
        else:
            s3.put_object(Bucket=EXAMPLE_BUCKET, Key=f"{prefix}/{key}", Body=body)
    name = f"broken-{unique}"
    assert tstack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{prefix}", format="onnx").status_code == 201
    with pytest.raises(InferenceServerException) as err:
        _infer_onnx(client, name, _onnx_input())
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    model = tstack.admin("GET", f"/v1/models/{name}").json()
    assert model["state"] == "FailedToLoad"
    message = model["lastFailure"]["message"]
    assert needle.lower() in message.lower() and "Internal Server Error" not in message, message
    good = f"good-{unique}"
    assert tstack.register(good, storage_uri=ONNX_URI, format="onnx").status_code == 201
    assert _infer_onnx(client, good, _onnx_input()).shape == (1, 10)
