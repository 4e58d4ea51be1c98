"""The controller in local mode over the whole stack as processes: `meshserve apply -f` writes
upstream-style YAML into the scheduler's resource store, the controller (its own process,
MESHSERVE_CONTROLLER_MODE=local) registers the models, starts the runtime's pods as local
processes, writes status back, follows transitions and scales the runtime to zero.

The stack starts with no runtime pods: every pod here is started by the controller."""

from __future__ import annotations

import copy
import io
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig
from meshserve.cli.main import main as cli
from meshserve.controller.specs import parse_inference_service

from .conftest import (
    EXAMPLES,
    direct_framework,
    direct_lightgbm,
    direct_onnx,
    direct_xgboost,
    example_input,
    infer_one,
    mnist_inputs,
    wait_for,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ISVC_YAML = ROOT / "examples" / "isvc" / "example-mlserver-sklearn-mnist-isvc.yaml"
RUNTIME_YAML = ROOT / "examples" / "isvc" / "mlserver-1.x-servingruntime.yaml"
ISVC = "example-sklearn-mnist-svm"
GRACE_SECONDS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("controller-local"))
    stack = Stack(StackConfig.from_env(root, pods=0, isolate=True, extra_env={"MESHSERVE_SCHEDULER_POD_TIMEOUT_SECONDS": "5"}))
    try:
        # Stack.start() with pods=0 would wait for pods that never come: the controller starts them
        stack.start_infra()
        stack.migrate()
        stack.start_scheduler()
        stack.start_router()
        stack.upload_examples(EXAMPLES)
        stack.s3_client().upload_file(
            str(EXAMPLES / "sklearn" / "mnist-svm.joblib"), EXAMPLE_BUCKET, "fvt/sklearn/mnist-svm.joblib"
        )
        stack.start_controller()
        yield stack
    finally:
        stack.stop()


def run_cli(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    try:
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        with redirect_stdout(out), redirect_stderr(err):
            rc = cli(list(argv))
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()


def apply_docs(stack: Stack, *docs: dict[str, Any]) -> str:
    rc, out, err = run_cli("apply", "-f", "-", "--admin", stack.admin_url, stdin=yaml.safe_dump_all(docs))
    assert rc == 0, err
    return out


def isvc_doc(path: str | None = None, **model: Any) -> dict[str, Any]:
    doc = yaml.safe_load(ISVC_YAML.read_text())
    if path is not None:
        doc["spec"]["predictor"]["model"]["storage"]["path"] = path
    doc["spec"]["predictor"]["model"].update(model)
    return doc  # type: ignore[no-any-return]


def model_status(stack: Stack, name: str = ISVC) -> dict[str, Any]:
    obj = stack.admin("GET", f"/v1/resources/InferenceService/default/{name}").json()
    return (obj.get("status") or {}).get("modelStatus") or {}


def runtime_pods(stack: Stack) -> list[dict[str, Any]]:
    return [p for p in stack.admin("GET", "/v1/pods").json()["items"] if p["runtime"] == "mlserver-1.x"]


def infer(stack: Stack, name: str = ISVC) -> tuple[list[list[int]], str]:
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        result = client.infer(name, mnist_inputs(), client_timeout=60)
        return result.as_numpy("predict").tolist(), result.get_response().model_name
    finally:
        client.close()


def test_apply_starts_runtime_pods_and_the_isvc_becomes_loaded(stack: Stack) -> None:
    config = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-serving-config"},
        "data": {"config.yaml": f"podsPerRuntime: 1\nscaleToZero:\n  enabled: true\n  gracePeriodSeconds: {GRACE_SECONDS}\n"},
    }
    out = apply_docs(stack, config)
    assert "configmap/model-serving-config created" in out
    rc, out, err = run_cli("apply", "-f", str(RUNTIME_YAML), "-f", str(ISVC_YAML), "--admin", stack.admin_url)
    assert rc == 0, err
    assert f"inferenceservice.serving.kserve.io/{ISVC} created" in out
    wait_for(lambda: runtime_pods(stack), timeout=90, what="a runtime pod started by the controller")
    assert stack.admin("GET", "/v1/vmodels").json()["items"], "the vmodel is registered"
    assert infer(stack)[0] == [[8]]
    status = wait_for(lambda: (s := model_status(stack)).get("states", {}).get("activeModelState") == "Loaded" and s,
                      timeout=30, what="status Loaded")
    assert status["transitionStatus"] == "UpToDate"
    assert status["copies"]["totalCopies"] >= 1
    obj = stack.admin("GET", f"/v1/resources/InferenceService/default/{ISVC}").json()
    assert obj["status"]["url"].startswith("grpc://")
    assert {"type": "Ready", "status": "True"}.items() <= obj["status"]["conditions"][1].items()
    rc, out, _ = run_cli("get", "isvc", "--admin", stack.admin_url)
    assert rc == 0 and ISVC in out and "Loaded" in out and "UpToDate" in out


@pytest.mark.parametrize(
    ("example", "input_file", "model_file"),
    [
        ("example-xgboost-mushroom-isvc.yaml", "xgboost-mushroom.json", "xgboost/mushroom.json"),
        ("example-lightgbm-mushroom-isvc.yaml", "lightgbm-mushroom.json", "lightgbm/mushroom.bst"),
    ],
)
def test_upstreams_mlserver_examples_are_served_as_their_library_answers(
    stack: Stack, example: str, input_file: str, model_file: str
) -> None:
    """Upstream's example InferenceServices for the other MLServer formats, applied unchanged."""
    path = ROOT / "examples" / "isvc" / example
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    rc, _, err = run_cli("apply", "-f", str(path), "--admin", stack.admin_url)
    assert rc == 0, err
    wait_for(lambda: stack.admin("GET", f"/v1/vmodels/{name}").status_code == 200, timeout=30, what=f"{name} registered")
    data = example_input(input_file)
    got = infer_one(stack.router_grpc, name, data, inp="predict", out="predict")
    direct = direct_xgboost if model_file.startswith("xgboost") else direct_lightgbm
    want = direct(EXAMPLES / model_file, data)
    np.testing.assert_allclose(got.reshape(-1), np.asarray(want).reshape(-1), rtol=1e-6)
    wait_for(lambda: model_status(stack, name).get("states", {}).get("activeModelState") == "Loaded",
             timeout=30, what=f"{name} Loaded")
    rc, _, err = run_cli("delete", "-f", str(path), "--admin", stack.admin_url)
    assert rc == 0, err


# upstream's Triton examples: (file, input file, input, output, how to run it directly)
TRITON_EXAMPLES = [
    ("example-onnx-mnist-isvc.yaml", "onnx-mnist.json", "Input3", "Plus214_Output_0", ("onnx", "onnx/mnist.onnx")),
    ("example-pytorch-cifar-isvc.yaml", "pytorch-cifar.json", "INPUT__0", "OUTPUT__0", ("pytorch", "pytorch/cifar/1/model.pt")),
    ("example-tensorflow-mnist-isvc.yaml", "tensorflow-mnist.json", "inputs", "classes", ("tensorflow", "tensorflow/mnist.savedmodel")),
    ("example-keras-mnist-isvc.yaml", "keras-mnist.json", "conv2d_input", "dense_1", ("keras", "keras/mnist.h5")),
    ("example-triton-xgboost-isvc.yaml", "xgboost-mushroom.json", "input__0", "output__0", ("xgboost", "xgboost/mushroom.json")),
]


def test_upstreams_triton_examples_are_served_by_a_triton_pod_the_controller_starts(stack: Stack) -> None:
    """The triton-2.x ServingRuntime and upstream's Triton example InferenceServices (onnx,
    pytorch, tensorflow, keras, xgboost on FIL), applied unchanged: the controller starts a
    Triton pod (tritonserver + puller) as local processes and every model answers as its
    own framework does."""
    runtime = ROOT / "examples" / "isvc" / "triton-2.x-servingruntime.yaml"
    paths = [ROOT / "examples" / "isvc" / example for example, *_ in TRITON_EXAMPLES]
    args = [a for path in [runtime, *paths] for a in ("-f", str(path))]
    rc, _, err = run_cli("apply", *args, "--admin", stack.admin_url)
    assert rc == 0, err
    wait_for(lambda: [p for p in stack.admin("GET", "/v1/pods").json()["items"] if p["runtime"] == "triton-2.x"],
             timeout=90, what="a Triton pod started by the controller")
    for path, (_, input_file, inp, out, (framework, model_file)) in zip(paths, TRITON_EXAMPLES, strict=True):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        data = example_input(input_file)
        wait_for(lambda name=name: stack.admin("GET", f"/v1/vmodels/{name}").status_code == 200, timeout=30, what=f"{name} registered")
        got = infer_one(stack.router_grpc, name, data, inp=inp, out=out)
        if framework == "onnx":
            want = direct_onnx(EXAMPLES / model_file, data)
        elif framework == "xgboost":
            want = np.asarray(direct_xgboost(EXAMPLES / model_file, data), dtype=np.float32)
        else:
            want = direct_framework(framework, EXAMPLES / model_file, data, inp=inp, out=out)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
        wait_for(lambda name=name: model_status(stack, name).get("states", {}).get("activeModelState") == "Loaded",
                 timeout=30, what=f"{name} Loaded")
    rc, _, err = run_cli("delete", *args, "--admin", stack.admin_url)
    assert rc == 0, err


def tf_serving_predict(address: str, name: str, data: np.ndarray) -> np.ndarray:
    import grpc

    from meshserve.common.proto.tensorflow.core.framework import (
        tensor_pb2,
        tensor_shape_pb2,
        types_pb2,
    )
    from meshserve.common.proto.tensorflow_serving.apis import (
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in data.shape]),
        tensor_content=data.astype(np.float32).tobytes(),
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["Input3"].CopyFrom(tensor)
    with grpc.insecure_channel(address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    out = response.outputs["Plus214_Output_0"]
    shape = [d.size for d in out.tensor_shape.dim]
    values = np.frombuffer(out.tensor_content, dtype=np.float32) if out.tensor_content else np.asarray(out.float_val, dtype=np.float32)
    return values.reshape(shape)


def test_the_ovms_runtime_serves_openvino_ir_in_local_mode(stack: Stack) -> None:
    """ovms-1.x (upstream's ServingRuntime) and an openvino_ir InferenceService: the controller
    starts an OVMS pod (the stand-in OVMS + a puller with the OVMS adapter) and the model
    answers as openvino does."""
    runtime = ROOT / "examples" / "isvc" / "ovms-1.x-servingruntime.yaml"
    path = ROOT / "examples" / "isvc" / "example-openvino-mnist-isvc.yaml"
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    rc, _, err = run_cli("apply", "-f", str(runtime), "-f", str(path), "--admin", stack.admin_url)
    assert rc == 0, err
    wait_for(lambda: stack.admin("GET", f"/v1/vmodels/{name}").status_code == 200, timeout=30, what=f"{name} registered")
    data = example_input("openvino-mnist.json")
    got = infer_one(stack.router_grpc, name, data, inp="Input3", out="Plus214_Output_0")
    want = direct_framework("openvino", EXAMPLES / "openvino" / "mnist" / "1" / "mnist.xml", data, inp="Input3", out="Plus214_Output_0")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # OVMS's own API, TF-Serving Predict, through the router: model_spec.name is the
    # InferenceService's name, rewritten to the model id on the way (idInjectionPath [1,1])
    np.testing.assert_allclose(tf_serving_predict(stack.router_grpc, name, data), want, rtol=1e-5, atol=1e-6)
    pods = [p for p in stack.admin("GET", "/v1/pods").json()["items"] if p["runtime"] == "ovms-1.x"]
    assert pods, "served by the ovms-1.x runtime's own pod"
    rc, _, err = run_cli("delete", "-f", str(path), "-f", str(runtime), "--admin", stack.admin_url)
    assert rc == 0, err


def test_a_custom_mlserver_runtime_with_its_own_format_serves_a_model_that_brings_its_code(stack: Stack) -> None:
    """examples/custom: a ServingRuntime for format `custom-scaler` and a model whose
    model-settings.json names its own MLModel class, shipped beside it."""
    custom = ROOT / "examples" / "custom"
    for path in sorted((custom / "mlserver-model").iterdir()):
        stack.s3_client().upload_file(str(path), EXAMPLE_BUCKET, f"custom/scaler/{path.name}")
    runtime, isvc = custom / "mlserver-custom-runtime.yaml", custom / "custom-scaler-isvc.yaml"
    rc, _, err = run_cli("apply", "-f", str(runtime), "-f", str(isvc), "--admin", stack.admin_url)
    assert rc == 0, err
    name = yaml.safe_load(isvc.read_text())["metadata"]["name"]
    wait_for(lambda: stack.admin("GET", f"/v1/vmodels/{name}").status_code == 200, timeout=30, what=f"{name} registered")
    data = np.array([[1.0, -2.0, 4.0]], dtype=np.float32)
    got = infer_one(stack.router_grpc, name, data, inp="x", out="scaled")
    assert got.tolist() == [[2.5, -5.0, 10.0]]  # scale 2.5 from the model's weights.json
    pods = [p for p in stack.admin("GET", "/v1/pods").json()["items"] if p["runtime"] == "mlserver-custom"]
    assert pods, "served by the custom runtime's own pods"
    rc, _, err = run_cli("delete", "-f", str(isvc), "-f", str(runtime), "--admin", stack.admin_url)
    assert rc == 0, err


def test_invalid_spec_is_reported_in_status(stack: Stack) -> None:
    bad = isvc_doc(storageUri="s3://modelmesh-example-models/sklearn/mnist-svm.joblib")
    bad["metadata"]["name"] = "bad-spec"
    apply_docs(stack, bad)
    status = wait_for(lambda: (s := model_status(stack, "bad-spec")).get("transitionStatus") == "InvalidSpec" and s,
                      timeout=30, what="InvalidSpec")
    assert status["lastFailureInfo"]["reason"] == "InvalidPredictorSpec"
    assert "cannot have both the storageUri and the storage.path" in status["lastFailureInfo"]["message"]
    rc, _, err = run_cli("delete", "-f", "-", "--admin", stack.admin_url, stdin=yaml.safe_dump(bad))
    assert rc == 0, err


def test_schema_errors_are_refused_per_document(stack: Stack) -> None:
    good = isvc_doc()
    good["metadata"]["name"] = "schema-ok"
    typo = copy.deepcopy(good)
    typo["metadata"]["name"] = "schema-typo"
    typo["spec"]["predictor"]["model"]["modelFormat"] = {"name": 7}
    rc, out, err = run_cli("apply", "-f", "-", "--admin", stack.admin_url, stdin=yaml.safe_dump_all([good, typo]))
    assert rc == 1
    assert "document 2, InferenceService schema-typo" in err and "modelFormat.name: 7 is not of type 'string'" in err
    assert "schema-ok created" in out
    assert stack.admin("GET", "/v1/resources/InferenceService/default/schema-typo").status_code == 404
    rc, _, err = run_cli("delete", "-f", "-", "--admin", stack.admin_url, stdin=yaml.safe_dump(good))
    assert rc == 0, err


def test_changing_the_storage_path_flips_without_a_failed_request(stack: Stack) -> None:
    old_id = infer(stack)[1]
    new_doc = isvc_doc(path="fvt/sklearn/mnist-svm.joblib")
    cr = parse_inference_service({**new_doc, "metadata": {**new_doc["metadata"], "namespace": "default"}})
    assert cr is not None and cr.model_id != old_id
    failures: list[str] = []
    served: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        client = grpcclient.InferenceServerClient(stack.router_grpc)
        try:
            while not stop.is_set():
                try:
                    result = client.infer(ISVC, mnist_inputs(), client_timeout=30)
                    if result.as_numpy("predict").tolist() != [[8]]:
                        failures.append("wrong answer")
                    served.append(result.get_response().model_name)
                except Exception as err:
                    failures.append(str(err))
        finally:
            client.close()

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(served) > 3, timeout=30, what="traffic flowing")
        apply_docs(stack, new_doc)
        wait_for(lambda: served and served[-1] == cr.model_id, timeout=90, what="the new model id being served")
        status = wait_for(
            lambda: (s := model_status(stack)).get("transitionStatus") == "UpToDate"
            and s["states"].get("targetModelState", "") == "" and s,
            timeout=30, what="UpToDate after the flip",
        )
        assert status["states"]["activeModelState"] == "Loaded"
        n = len(served)
        wait_for(lambda: len(served) > n + 3, timeout=30, what="more traffic after the flip")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures == []
    assert old_id in served and served[-1] == cr.model_id
    vmodel = next(v for v in stack.admin("GET", "/v1/vmodels").json()["items"] if v["id"] == ISVC)
    assert vmodel["activeModelId"] == cr.model_id


def test_invalid_new_path_blocks_and_the_old_model_keeps_serving(stack: Stack) -> None:
    _, serving = infer(stack)
    apply_docs(stack, isvc_doc(path="invalid/Storage/Path"))
    status = wait_for(
        lambda: (s := model_status(stack)).get("transitionStatus") == "BlockedByFailedLoad" and s,
        timeout=90, what="BlockedByFailedLoad",
    )
    assert status["states"] == {"activeModelState": "Loaded", "targetModelState": "FailedToLoad"}
    assert status["lastFailureInfo"]["reason"] == "ModelLoadFailed"
    assert status["lastFailureInfo"]["message"]
    assert infer(stack) == ([[8]], serving)


def test_delete_unregisters_and_scales_the_runtime_to_zero(stack: Stack) -> None:
    assert runtime_pods(stack)
    started = time.monotonic()
    rc, out, err = run_cli("delete", "-f", str(ISVC_YAML), "--admin", stack.admin_url)
    assert rc == 0, err
    assert f'inferenceservice.serving.kserve.io "{ISVC}" deleted' in out
    wait_for(lambda: all(v["id"] != ISVC for v in stack.admin("GET", "/v1/vmodels").json()["items"]),
             timeout=30, what="the vmodel unregistered")
    # the controller removes the pod folders after stopping its processes; the scheduler then drops the pods
    wait_for(lambda: not any((stack.root / "pods").glob("pod-*")), timeout=60, what="runtime pod processes stopped")
    assert time.monotonic() - started >= GRACE_SECONDS - 1.0, "not before the grace period"
    wait_for(lambda: not runtime_pods(stack), timeout=30, what="the scheduler to drop the stopped pods")
    rc, _, err = run_cli("delete", "-f", str(ISVC_YAML), "--admin", stack.admin_url)
    assert rc == 1 and "NotFound" in err
