"""Every format upstream's mlserver-1.x runtime serves (sklearn, xgboost, lightgbm), on the
real MLServer through the whole stack, from the layouts upstream's MLServer adapter accepts.
Each answer is compared with the same model file run by its own library in this process.
Bad files fail to load with MLServer's own reason, and the pod keeps serving."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack

from .conftest import (
    EXAMPLES,
    MNIST_URI,
    direct_lightgbm,
    direct_xgboost,
    example_input,
    infer_one,
    mnist_inputs,
)

pytestmark = pytest.mark.integration


def _infer(triton: grpcclient.InferenceServerClient, model: str, data: np.ndarray) -> np.ndarray:
    return infer_one(triton, model, data, inp="predict", out="predict")


@pytest.mark.parametrize(
    ("fmt", "key", "inputs", "direct", "dtype"),
    [
        ("xgboost", "xgboost/mushroom.json", "xgboost-mushroom.json", direct_xgboost, np.float32),
        ("lightgbm", "lightgbm/mushroom.bst", "lightgbm-mushroom.json", direct_lightgbm, np.float64),
    ],
)
def test_a_single_file_of_each_format_answers_like_its_library(
    stack: Stack, triton: grpcclient.InferenceServerClient, unique: str, fmt: str, key: str, inputs: str, direct, dtype  # type: ignore[no-untyped-def]
) -> None:
    name = f"{fmt}-{unique}"
    assert stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{key}", format=fmt).status_code == 201
    data = example_input(inputs)
    got = _infer(triton, name, data)
    want = direct(EXAMPLES / key, data)
    assert got.dtype == dtype  # upstream: xgboost answers FP32, lightgbm FP64
    np.testing.assert_allclose(got.reshape(-1), np.asarray(want).reshape(-1), rtol=1e-6)
    assert 0.0 <= float(got.reshape(-1)[0]) <= 1.0


def test_a_folder_with_the_users_model_settings_is_merged_not_overwritten(
    stack: Stack, triton: grpcclient.InferenceServerClient, unique: str
) -> None:
    """Upstream's "xgboost-example" layout: a folder with model-settings.json whose relative
    uri names a file that is not a well-known name; the user's parameters survive."""
    s3 = stack.s3_client()
    prefix = f"mlserver-layout/{unique}"
    s3.upload_file(str(EXAMPLES / "xgboost" / "mushroom.json"), EXAMPLE_BUCKET, f"{prefix}/mushroom-xgboost.json")
    user = {
        "name": "mushroom-xgboost",
        "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./mushroom-xgboost.json", "version": "v0.1.0"},
    }
    s3.put_object(Bucket=EXAMPLE_BUCKET, Key=f"{prefix}/model-settings.json", Body=json.dumps(user).encode())
    name = f"settings-{unique}"
    assert stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{prefix}", format="xgboost").status_code == 201
    data = example_input("xgboost-mushroom.json")
    got = _infer(triton, name, data)
    np.testing.assert_allclose(got.reshape(-1), direct_xgboost(EXAMPLES / "xgboost" / "mushroom.json", data), rtol=1e-6)
    # MLServer holds it under the model id, with the user's version
    held = [
        entry
        for pod in stack.pods
        for entry in httpx.post(f"{pod.mlserver_rest}/v2/repository/index", json={}, timeout=10).json()
        if entry["name"] == name
    ]
    assert [(e["version"], e["state"]) for e in held] == [("v0.1.0", "READY")]


def test_a_folder_with_a_well_known_file_name_and_other_files(
    stack: Stack, triton: grpcclient.InferenceServerClient, unique: str
) -> None:
    s3 = stack.s3_client()
    prefix = f"mlserver-wellknown/{unique}"
    s3.upload_file(str(EXAMPLES / "lightgbm" / "mushroom.bst"), EXAMPLE_BUCKET, f"{prefix}/model.bst")
    s3.put_object(Bucket=EXAMPLE_BUCKET, Key=f"{prefix}/README.txt", Body=b"trained on synthetic mushrooms")
    name = f"wellknown-{unique}"
    assert stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{prefix}", format="lightgbm").status_code == 201
    data = example_input("lightgbm-mushroom.json")
    np.testing.assert_allclose(
        _infer(triton, name, data).reshape(-1), direct_lightgbm(EXAMPLES / "lightgbm" / "mushroom.bst", data), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("fmt", "filename", "body", "reason"),
    [
        ("xgboost", "model.json", b'{"learner": {"truncated', "xgboost"),
        ("lightgbm", "model.bst", b"tree\nversion=v4\nnum_class=", "lightgbm"),
        ("sklearn", "model.joblib", b"not a pickle at all", "sklearn"),
    ],
)
def test_a_file_the_runtime_cannot_read_fails_with_mlservers_reason(
    stack: Stack, triton: grpcclient.InferenceServerClient, unique: str, fmt: str, filename: str, body: bytes, reason: str
) -> None:
    key = f"broken/{unique}/{filename}"
    stack.s3_client().put_object(Bucket=EXAMPLE_BUCKET, Key=key, Body=body)
    name = f"broken-{fmt}-{unique}"
    assert stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{key}", format=fmt).status_code == 201
    with pytest.raises(InferenceServerException) as err:
        triton.infer(name, mnist_inputs(), client_timeout=90)
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    model = stack.admin("GET", f"/v1/models/{name}").json()
    assert model["state"] == "FailedToLoad"
    message = model["lastFailure"]["message"]
    assert "Internal Server Error" not in message, message
    assert reason in message.lower(), message
    # the pods keep serving other models
    good = f"good-{fmt}-{unique}"
    assert stack.register(good, storage_uri=MNIST_URI).status_code == 201
    assert triton.infer(good, mnist_inputs()).as_numpy("predict").tolist() == [[8]]


def test_a_format_mlserver_has_no_implementation_for_is_refused_with_the_choices(
    stack: Stack, unique: str
) -> None:
    name = f"noimpl-{unique}"
    response = stack.register(name, storage_uri=MNIST_URI, format="pmml")
    if response.status_code == 201:  # accepted for later: no runtime serves pmml, so no load happens
        model = stack.admin("GET", f"/v1/models/{name}").json()
        assert model["state"] in ("Standby", "FailedToLoad")
    else:
        assert response.status_code in (400, 412, 422) and "pmml" in response.text
