"""The real Triton Inference Server (nvidia-pytriton's tritonserver 2.51, python backend
only) as a runtime pod: the puller lays out the repository entry, writes config.pbtxt and
loads through Triton's repository API; the router forwards KServe v2 calls to it. Formats
with no native backend in this installation are served by meshserve's python-backend model
with the native backend's input and output names. Answers are compared with the model run
directly by its own library in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig

from .conftest import (
    EXAMPLES,
    TRITON_PYTHON,
    direct_framework,
    direct_lightgbm,
    direct_onnx,
    direct_xgboost,
    example_input,
    infer_one,
)

pytestmark = pytest.mark.integration

ONNX_URI = f"s3://{EXAMPLE_BUCKET}/onnx/mnist.onnx"
POD_CAPACITY = 6 << 30


@pytest.fixture(scope="module")
def tstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(StackConfig.from_env(Path(tmp_path_factory.mktemp("triton-stack")), pods=0, isolate=True))
    try:
        s.start()
        s.upload_examples(EXAMPLES)
        # python-backend models cost what their framework costs (~30 MiB onnx, ~160 MiB torch,
        # ~230 MiB tensorflow, measured): room for every test's models at once
        # onnx's framework imported at pod start by the warm-up model (cheap: onnxruntime)
        pod = s.start_triton_pod(capacity_bytes=POD_CAPACITY, env={"MESHSERVE_PULLER_TRITON_PRESTART_FORMATS": "onnx"})
        s.wait_for_pods([pod])
        yield s
    finally:
        s.stop()


@pytest.fixture(autouse=True)
def _unregister_after(tstack: Stack) -> Iterator[None]:
    """Each test's models are unregistered after it (their stub processes end), so the
    shared pod's memory stays what one test needs."""
    def registered() -> set[str]:
        return {m["id"] for m in tstack.admin("GET", "/v1/models?limit=1000").json()["items"]}

    before = registered()
    yield
    for model_id in sorted(registered() - before):
        assert tstack.admin("DELETE", f"/v1/models/{model_id}").status_code == 204


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


def test_the_pods_warm_up_model_is_no_model_of_the_pod_and_comes_off_its_capacity(tstack: Stack) -> None:
    [pod] = [p for p in tstack.admin("GET", "/v1/pods").json()["items"] if p["id"].startswith("triton-")]
    taken = POD_CAPACITY - pod["capacityBytes"]
    assert 5 << 20 < taken < 300 << 20, taken  # onnxruntime's stub: tens of MiB
    assert not [m for m in pod["models"] if "warm" in m["id"]]  # never reported as a copy


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


CIFAR_CONFIG = (EXAMPLES / "pytorch" / "cifar" / "config.pbtxt").read_bytes() if (EXAMPLES / "pytorch").is_dir() else b""


@pytest.mark.parametrize(
    ("fmt", "files", "needle"),
    [
        ("onnx", {"model.onnx": b"\x08\x07not an onnx graph"}, "onnx"),
        ("onnx", {"config.pbtxt": b"name: [unclosed", "1/model.onnx": "onnx/mnist.onnx"}, "config.pbtxt does not parse"),
        ("pytorch", {"config.pbtxt": CIFAR_CONFIG, "1/model.pt": b"PK\x03\x04 truncated TorchScript"}, "zip archive"),
        ("pytorch", {"1/model.pt": "pytorch/cifar/1/model.pt"}, "needs its inputs and outputs in config.pbtxt"),
        ("tensorflow", {"saved_model.pb": b"\x0a\x05 not a SavedModel", "variables/variables.index": b""}, "saved_model"),
        ("keras", {"mnist.h5": b"\x89HDF\r\n\x1a\n truncated"}, "could not be converted to a SavedModel"),
        ("openvino_ir", {"1/mnist.xml": b"<net name='x'><layers>", "1/mnist.bin": b""}, "xml"),
    ],
    ids=["truncated-onnx", "bad-config", "truncated-torchscript", "pytorch-without-config", "bad-savedmodel",
         "truncated-h5", "bad-openvino-xml"],
)
def test_files_triton_cannot_read_fail_with_the_reason_and_the_pod_keeps_serving(
    tstack: Stack, client: grpcclient.InferenceServerClient, unique: str, fmt: str, files: dict[str, bytes | str],
    needle: str,
) -> None:
    """Bytes are the file; a str names an example file to upload as it is."""
    s3 = tstack.s3_client()
    prefix = f"triton-broken/{unique}"
    for key, body in files.items():
        if isinstance(body, str):
            s3.upload_file(str(EXAMPLES / body), EXAMPLE_BUCKET, f"{prefix}/{key}")
        else:
            s3.put_object(Bucket=EXAMPLE_BUCKET, Key=f"{prefix}/{key}", Body=body)
    name = f"broken-{unique}"
    assert tstack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{prefix}", format=fmt).status_code == 201
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


# upstream's example bucket layout, served through the python backend with the framework the
# native backend would use; (format, storage path, input file, input, output, framework, file
# the framework opens, output dtype and shape, metadata shapes)
FRAMEWORK_CASES = [
    pytest.param(
        "pytorch", "pytorch/cifar", "pytorch-cifar.json", "INPUT__0", "OUTPUT__0", "pytorch", "pytorch/cifar/1/model.pt",
        np.float32, (1, 10), ["-1", "3", "32", "32"], ["-1", "10"], id="pytorch",
    ),
    pytest.param(
        "tensorflow", "tensorflow/mnist.savedmodel", "tensorflow-mnist.json", "inputs", "classes", "tensorflow",
        "tensorflow/mnist.savedmodel", np.int64, (1, 1), ["-1", "784"], ["-1", "1"], id="tensorflow",
    ),
    pytest.param(
        "keras", "keras/mnist.h5", "keras-mnist.json", "conv2d_input", "dense_1", "keras", "keras/mnist.h5",
        np.float32, (1, 10), ["-1", "28", "28", "1"], ["-1", "10"], id="keras",
    ),
    pytest.param(
        "openvino_ir", "openvino/mnist", "openvino-mnist.json", "Input3", "Plus214_Output_0", "openvino",
        "openvino/mnist/1/mnist.xml", np.float32, (1, 10), ["1", "1", "28", "28"], ["1", "10"], id="openvino_ir",
    ),
]


@pytest.mark.parametrize(
    ("fmt", "path", "input_file", "inp", "out", "framework", "model_file", "dtype", "shape", "in_dims", "out_dims"),
    FRAMEWORK_CASES,
)
def test_every_triton_format_answers_like_its_own_framework(
    tstack: Stack, client: grpcclient.InferenceServerClient, unique: str, fmt: str, path: str, input_file: str,
    inp: str, out: str, framework: str, model_file: str, dtype: type, shape: tuple[int, ...], in_dims: list[str],
    out_dims: list[str],
) -> None:
    name = f"{fmt.replace('_', '-')}-{unique}"
    assert tstack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{path}", format=fmt).status_code == 201
    data = example_input(input_file)
    tensor = grpcclient.InferInput(inp, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    got = client.infer(name, [tensor], outputs=[grpcclient.InferRequestedOutput(out)], client_timeout=120).as_numpy(out)
    want = direct_framework(framework, EXAMPLES / model_file, data, inp=inp, out=out)
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    metadata = client.get_model_metadata(name, as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [(inp, "FP32", in_dims)]
    assert (out, out_dims) in [(t["name"], t["shape"]) for t in metadata["outputs"]]
    model = tstack.admin("GET", f"/v1/models/{name}").json()
    assert model["state"] == "Loaded" and model["copies"][0]["pod"].startswith("triton-")


def test_the_mnist_examples_of_every_format_read_the_same_digit(tstack: Stack, client: grpcclient.InferenceServerClient, unique: str) -> None:
    """onnx, tensorflow, keras and openvino_ir hold one classifier (make_framework_models.py):
    served side by side on one pod, they agree on the example image."""
    onnx = f"onnx-{unique}"
    tf_name, keras_name, ov_name = f"tf-{unique}", f"keras-{unique}", f"ov-{unique}"
    for name, fmt, path in (
        (onnx, "onnx", "onnx/mnist.onnx"), (tf_name, "tensorflow", "tensorflow/mnist.savedmodel"),
        (keras_name, "keras", "keras/mnist.h5"), (ov_name, "openvino_ir", "openvino/mnist"),
    ):
        assert tstack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{path}", format=fmt).status_code == 201
    digit = int(np.argmax(_infer_onnx(client, onnx, _onnx_input())))
    assert int(infer_one(client, tf_name, example_input("tensorflow-mnist.json"), inp="inputs", out="classes")[0, 0]) == digit
    assert int(np.argmax(infer_one(client, keras_name, example_input("keras-mnist.json"), inp="conv2d_input", out="dense_1"))) == digit
    assert int(np.argmax(infer_one(client, ov_name, example_input("openvino-mnist.json"), inp="Input3", out="Plus214_Output_0"))) == digit


def test_a_savedmodel_without_a_serving_signature_fails_with_that_reason(
    tstack: Stack, client: grpcclient.InferenceServerClient, unique: str, tmp_path: Path
) -> None:
    import subprocess

    folder = tmp_path / "unsigned.savedmodel"
    script = f"import tensorflow as tf; m = tf.Module(); m.v = tf.Variable(1.0); tf.saved_model.save(m, {str(folder)!r})"
    subprocess.run([str(TRITON_PYTHON), "-c", script], check=True, timeout=300, capture_output=True)
    s3 = tstack.s3_client()
    prefix = f"triton-unsigned/{unique}"
    for path in folder.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), EXAMPLE_BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    name = f"unsigned-{unique}"
    assert tstack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{prefix}", format="tensorflow").status_code == 201
    with pytest.raises(InferenceServerException) as err:
        infer_one(client, name, example_input("tensorflow-mnist.json"), inp="inputs", out="classes")
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    model = tstack.admin("GET", f"/v1/models/{name}").json()
    assert model["state"] == "FailedToLoad"
    assert "no serving_default signature" in model["lastFailure"]["message"], model["lastFailure"]


@pytest.mark.parametrize(
    ("fmt", "path", "model_file", "direct"),
    [
        ("xgboost", "xgboost/mushroom-fil", "xgboost/mushroom.json", direct_xgboost),
        ("lightgbm", "lightgbm/mushroom-fil", "lightgbm/mushroom.bst", direct_lightgbm),
    ],
    ids=["xgboost-fil", "lightgbm-fil"],
)
def test_tree_models_in_upstreams_fil_layout_answer_like_their_library(
    tstack: Stack, client: grpcclient.InferenceServerClient, unique: str, fmt: str, path: str, model_file: str,
    direct: Callable[[Path, np.ndarray], np.ndarray],
) -> None:
    """upstream's example-triton-xgboost-isvc layout (`1/xgboost.json` + a FIL config.pbtxt):
    input__0 FP32 [1,126] -> output__0 FP32 [1], the booster's probability."""
    name = f"fil-{fmt}-{unique}"
    # as upstream, Triton does not auto-select tree formats: the runtime is named
    assert tstack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{path}", format=fmt, runtime="triton-2.x").status_code == 201
    data = example_input("xgboost-mushroom.json")
    got = infer_one(client, name, data, inp="input__0", out="output__0")
    assert got.dtype == np.float32 and got.shape == (1,)
    np.testing.assert_allclose(got, np.asarray(direct(EXAMPLES / model_file, data), dtype=np.float32), rtol=1e-5)
