"""A custom runtime that implements ModelMesh's runtime SPI itself, in the whole stack.

The example runtime (examples/custom/spi-runtime/runtime.py: `mmesh.ModelRuntime` on a Unix
socket, KServe v2 on a port, format `linear-json`) runs as a real process beside a puller with
the SPI adapter (`MESHSERVE_PULLER_MODEL_SERVER_KIND=spi`); the real scheduler places models on
it and the real router forwards v2 calls to it. Answers are compared with y = x.W + b
computed here. The pods have no memory probe, so the copy's size is the one the runtime
reports. The last test applies the example's ServingRuntime and InferenceService YAML through
the controller (local mode), which runs the runtime from its `meshserve.io/local-command`."""

from __future__ import annotations

import io
import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from tritonclient.utils import InferenceServerException

from meshserve.cli.devstack import EXAMPLE_BUCKET, PodHandle, Stack, StackConfig
from meshserve.cli.main import main as cli

from .conftest import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom" / "spi-runtime"
RUNTIME = EXAMPLE / "runtime.py"
RT, RT_NO_HELPER = "linear-json-test", "linear-json-nohelper"  # not the example YAML's name (see the last test)
CAPACITY, LOADING = 300 * 1024 * 1024, 2
OVERHEAD = 64 * 1024  # the example runtime's model size: 64 KiB + 8 bytes per parameter
W = [[0.5, -1.0], [2.0, 0.25], [1.0, 1.0]]
B = [0.1, -0.2]
X = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5], [0.0, 0.0, 0.0]], dtype=np.float32)


def _command() -> list[str]:
    return [
        sys.executable, str(RUNTIME), "--grpc-endpoint", "{grpc_endpoint}", "--data-endpoint", "{data_endpoint}",
        "--host", "127.0.0.1", "--storage-config-dir", "{storage_config_dir}",
        "--capacity-bytes", str(CAPACITY), "--max-loading-concurrency", str(LOADING),
    ]


@pytest.fixture(scope="module")
def spi_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(StackConfig.from_env(Path(tmp_path_factory.mktemp("spi-stack")), pods=0, isolate=True))
    try:
        s.start()
        s3 = s.s3_client()
        try:
            s3.create_bucket(Bucket=EXAMPLE_BUCKET)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        s.start_spi_pod(_command(), runtime=RT, formats="linear-json:1", pod_id="spi-0")
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def no_helper_pod(spi_stack: Stack) -> PodHandle:
    """A pod of a runtime with `storageHelper.disabled`: the runtime fetches its own files."""
    return spi_stack.start_spi_pod(
        _command(), runtime=RT_NO_HELPER, formats="linear-json:1", pod_id="spi-nohelper",
        env={"MESHSERVE_PULLER_STORAGE_HELPER_DISABLED": "true"},
    )


@pytest.fixture(scope="module")
def private_bucket(spi_stack: Stack) -> tuple[str, str]:
    """(bucket, storage key): a bucket only a storage-config entry of its own names, so a
    model there loads only if its storage key or storage_params reached whoever fetches it."""
    bucket = f"spi-private-{uuid.uuid4().hex[:8]}"
    spi_stack.s3_client().create_bucket(Bucket=bucket)
    entry = json.loads((spi_stack.storage_config_dir / "default").read_text())
    secret = f"spiPrivate{uuid.uuid4().hex[:6]}"
    (spi_stack.storage_config_dir / secret).write_text(json.dumps({**entry, "bucket": bucket}))
    return bucket, secret


@pytest.fixture
def client(spi_stack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(spi_stack.router_grpc)
    yield c
    c.close()


def _upload(stack: Stack, key: str, body: object, *, bucket: str = EXAMPLE_BUCKET) -> None:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    stack.s3_client().put_object(Bucket=bucket, Key=key, Body=data)


def _infer(client: grpcclient.InferenceServerClient, name: str, x: np.ndarray = X) -> np.ndarray:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(name, [tensor], client_timeout=90).as_numpy("y")  # type: ignore[no-any-return]


def _expected(w: list[list[float]], b: list[float], x: np.ndarray = X) -> np.ndarray:
    return x.astype(np.float64) @ np.array(w, dtype=np.float64) + np.array(b, dtype=np.float64)


def _pod(stack: Stack, pod_id: str) -> dict:  # type: ignore[type-arg]
    return next(p for p in stack.admin("GET", "/v1/pods").json()["items"] if p["id"] == pod_id)


def test_a_linear_json_model_answers_through_the_router_at_the_runtimes_size(
    spi_stack: Stack, client: grpcclient.InferenceServerClient, unique: str
) -> None:
    key = f"spi/{unique}/model.json"
    _upload(spi_stack, key, {"weights": W, "bias": B})
    name = f"linear-{unique}"
    response = spi_stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{key}", format="linear-json", runtime=RT)
    assert response.status_code == 201, response.text
    got = _infer(client, name)
    assert got.shape == (3, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, _expected(W, B), rtol=1e-6, atol=1e-6)
    model = spi_stack.admin("GET", f"/v1/models/{name}").json()
    assert model["state"] == "Loaded" and [c["pod"] for c in model["copies"]] == ["spi-0"]
    # the runtime's runtimeStatus gave the pod its capacity and loading concurrency, and its
    # loadModel answer is the bytes the copy takes (not the puller's disk x 1.25 guess)
    pod = _pod(spi_stack, "spi-0")
    assert (pod["capacityBytes"], pod["maxLoadingConcurrency"]) == (CAPACITY, LOADING)
    assert {"id": name, "bytes": OVERHEAD + 8 * (6 + 2)} in pod["models"]
    # the downloaded file is where the runtime was told to read it
    assert (spi_stack.root / "pods" / "spi-0" / "models" / name / "model.json").is_file()


def test_a_bad_model_file_fails_to_load_with_the_runtimes_message_and_others_keep_serving(
    spi_stack: Stack, client: grpcclient.InferenceServerClient, unique: str
) -> None:
    good_key, bad_key = f"spi/{unique}/good.json", f"spi/{unique}/bad.json"
    w2, b2 = [[1.0], [2.0], [-3.0]], [0.5]
    _upload(spi_stack, good_key, {"weights": w2, "bias": b2})
    _upload(spi_stack, bad_key, {"weights": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "bias": [1.0, 2.0, 3.0]})
    good, bad = f"good-{unique}", f"bad-{unique}"
    assert spi_stack.register(good, storage_uri=f"s3://{EXAMPLE_BUCKET}/{good_key}", format="linear-json", runtime=RT).status_code == 201
    np.testing.assert_allclose(_infer(client, good), _expected(w2, b2), rtol=1e-6, atol=1e-6)

    assert spi_stack.register(bad, storage_uri=f"s3://{EXAMPLE_BUCKET}/{bad_key}", format="linear-json", runtime=RT).status_code == 201
    with pytest.raises(InferenceServerException) as err:
        _infer(client, bad)
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    model = spi_stack.admin("GET", f"/v1/models/{bad}").json()
    assert model["state"] == "FailedToLoad"
    assert model["lastFailure"]["reason"] == "ModelLoadFailed"
    assert "bad.json: bias has 3 values; the weights have 2 output(s)" in model["lastFailure"]["message"]
    assert bad not in {m["id"] for m in _pod(spi_stack, "spi-0")["models"]}
    # the model loaded before keeps serving, and a new one loads
    np.testing.assert_allclose(_infer(client, good), _expected(w2, b2), rtol=1e-6, atol=1e-6)
    later_key, later = f"spi/{unique}/later.json", f"later-{unique}"
    _upload(spi_stack, later_key, {"weights": W, "bias": B})
    assert spi_stack.register(later, storage_uri=f"s3://{EXAMPLE_BUCKET}/{later_key}", format="linear-json", runtime=RT).status_code == 201
    np.testing.assert_allclose(_infer(client, later), _expected(W, B), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("how", ["storage-key", "storage-uri"])
def test_without_a_storage_helper_the_runtime_is_given_the_storage_details_and_fetches_itself(
    spi_stack: Stack, no_helper_pod: PodHandle, private_bucket: tuple[str, str],
    client: grpcclient.InferenceServerClient, unique: str, how: str,
) -> None:
    bucket, secret = private_bucket
    key = f"spi-nohelper/{unique}/{how}/model.json"
    w, b = [[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]], [0.0, 1.0, -1.0]
    _upload(spi_stack, key, {"weights": w, "bias": b}, bucket=bucket)   # not in the default entry's bucket
    name = f"nohelper-{how}-{unique}"
    if how == "storage-key":  # the storage key names the secret entry of the private bucket
        body = {"name": name, "format": "linear-json", "storageKey": secret, "storagePath": key, "runtime": RT_NO_HELPER}
        response = spi_stack.admin("POST", "/v1/models", json=body)
    else:                     # s3://bucket/path: the bucket travels in storage_params, over the default entry's
        response = spi_stack.register(name, storage_uri=f"s3://{bucket}/{key}", format="linear-json", runtime=RT_NO_HELPER)
    assert response.status_code == 201, response.text
    np.testing.assert_allclose(_infer(client, name), _expected(w, b), rtol=1e-6, atol=1e-6)
    model = spi_stack.admin("GET", f"/v1/models/{name}").json()
    assert [c["pod"] for c in model["copies"]] == ["spi-nohelper"]
    assert not (spi_stack.root / "pods" / "spi-nohelper" / "models" / name).exists()  # the puller downloaded nothing
    assert {"id": name, "bytes": OVERHEAD + 8 * (9 + 3)} in _pod(spi_stack, "spi-nohelper")["models"]
    if how == "storage-key":
        # control: the same path without the key is looked up in the default entry's bucket
        # by the runtime, and its own message says so
        body = {"name": f"{name}-nokey", "format": "linear-json", "storagePath": key, "runtime": RT_NO_HELPER}
        assert spi_stack.admin("POST", "/v1/models", json=body).status_code == 201
        with pytest.raises(InferenceServerException):
            _infer(client, f"{name}-nokey")
        failure = spi_stack.admin("GET", f"/v1/models/{name}-nokey").json()["lastFailure"]
        assert f"no model at s3://{EXAMPLE_BUCKET}/{key}" in failure["message"]


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_the_examples_yaml_through_the_controller_served_by_a_pod_it_starts(
    spi_stack: Stack, client: grpcclient.InferenceServerClient
) -> None:
    """`meshserve apply` of examples/custom/spi-runtime/{servingruntime,inferenceservice}.yaml:
    local mode runs the runtime's pod from the ServingRuntime's local-command annotation, with
    the container's env, beside a puller on kind spi."""
    runtime_yaml, isvc_yaml = EXAMPLE / "servingruntime.yaml", EXAMPLE / "inferenceservice.yaml"
    runtime_doc: dict[str, Any] = yaml.safe_load(runtime_yaml.read_text())
    runtime_name = runtime_doc["metadata"]["name"]
    container_env = {e["name"]: e["value"] for e in runtime_doc["spec"]["containers"][0]["env"]}
    isvc: dict[str, Any] = yaml.safe_load(isvc_yaml.read_text())
    name = isvc["metadata"]["name"]
    spi_stack.s3_client().upload_file(str(EXAMPLE / "model" / "model.json"), EXAMPLE_BUCKET, "custom/linear-json/model.json")
    spi_stack.start_controller()
    rc, out, err = _cli("apply", "-f", str(runtime_yaml), "-f", str(isvc_yaml), "--admin", spi_stack.admin_url)
    assert rc == 0, err
    assert f"inferenceservice.serving.kserve.io/{name} created" in out

    def runtime_pods() -> list[dict[str, Any]]:
        return [p for p in spi_stack.admin("GET", "/v1/pods").json()["items"] if p["runtime"] == runtime_name]

    pod = wait_for(lambda: next(iter(runtime_pods()), None), timeout=90, what=f"a {runtime_name} pod started by the controller")
    # the runtime got the container's env and reported it in runtimeStatus
    assert pod["capacityBytes"] == int(container_env["RUNTIME_CAPACITY_BYTES"])
    assert pod["maxLoadingConcurrency"] == int(container_env["RUNTIME_LOADING_CONCURRENCY"])
    wait_for(lambda: spi_stack.admin("GET", f"/v1/vmodels/{name}").status_code == 200, timeout=60, what=f"{name} registered")
    model = json.loads((EXAMPLE / "model" / "model.json").read_text())
    np.testing.assert_allclose(_infer(client, name), _expected(model["weights"], model["bias"]), rtol=1e-6, atol=1e-6)

    def status() -> dict[str, Any]:
        obj = spi_stack.admin("GET", f"/v1/resources/InferenceService/default/{name}").json()
        return (obj.get("status") or {}).get("modelStatus") or {}

    wait_for(lambda: status().get("states", {}).get("activeModelState") == "Loaded", timeout=30, what=f"{name} Loaded")
    # the README's `meshserve infer` (typed contents, not raw bytes, reach the runtime)
    request = spi_stack.root / "linear-json-request.json"
    request.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}))
    rc, out, err = _cli("infer", name, "-f", str(request), "--router", spi_stack.router_grpc)
    assert rc == 0, err
    [output] = json.loads(out)["outputs"]
    assert output["name"] == "y" and output["shape"] == ["1", "2"]
    np.testing.assert_allclose(output["contents"]["fp32Contents"], [7.6, 2.3], rtol=1e-6)  # the README's answer
    # the runtime has podsPerRuntime (2) pods; the one copy is on one of them, in its allocations
    held = {p["id"]: [m["id"].split("__")[0] for m in p["models"]] for p in runtime_pods()}
    assert sorted(m for models in held.values() for m in models) == [name], held
    rc, _, err = _cli("delete", "-f", str(isvc_yaml), "-f", str(runtime_yaml), "--admin", spi_stack.admin_url)
    assert rc == 0, err
