from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from meshserve.controller import specs

EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "isvc"


def isvc(predictor: dict[str, Any], annotations: dict[str, str] | None = None, name: str = "m") -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "ns", "uid": "u1", "generation": 1,
                     "annotations": {specs.DEPLOYMENT_MODE_ANNOTATION: "ModelMesh", **(annotations or {})}},
        "spec": {"predictor": predictor},
    }


def predictor(spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec}


def test_isvc_without_modelmesh_annotation_is_ignored() -> None:
    obj = isvc({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p"}})
    obj["metadata"]["annotations"] = {}
    assert specs.parse_inference_service(obj) is None
    obj["metadata"]["annotations"] = {specs.DEPLOYMENT_MODE_ANNOTATION: "Serverless"}
    assert specs.parse_inference_service(obj) is None


def test_new_form_with_storage_key_and_path() -> None:
    p = specs.parse_inference_service(yaml.safe_load((EXAMPLES / "example-mlserver-sklearn-mnist-isvc.yaml").read_text()))
    assert p is not None and p.spec is not None
    assert (p.spec.model_type, p.spec.storage_key, p.spec.storage_path) == ("sklearn", "localMinIO", "sklearn/mnist-svm.joblib")
    assert p.source == "isvc" and p.vmodel_id == "example-sklearn-mnist-svm"
    assert p.model_id.startswith("example-sklearn-mnist-svm__isvc-") and len(p.model_id.rsplit("-", 1)[1]) == 10
    assert p.spec.type_label() == "mt:sklearn"


def test_new_form_storage_uri_with_secret_key_annotation() -> None:
    p = specs.parse_inference_service(yaml.safe_load((EXAMPLES / "new-format-mm.yaml").read_text()))
    assert p is not None and p.spec is not None
    assert p.spec.storage_key == "localMinIO"
    assert p.spec.storage_path == "sklearn/mnist-svm.joblib"
    assert dict(p.spec.storage_params) == {"type": "s3", "bucket": "modelmesh-example-models"}
    assert p.spec.protocol_version == "grpc-v2"
    assert p.spec.type_label() == "mt:sklearn|pv:grpc-v2"


def test_old_form_framework() -> None:
    p = specs.parse_inference_service(yaml.safe_load((EXAMPLES / "old-format-mm.yaml").read_text()))
    assert p is not None and p.spec is not None and p.spec.model_type == "sklearn"
    obj = isvc({"xgboost": {"storageUri": "s3://b/x.json"}}, {specs.RUNTIME_ANNOTATION: "triton-2.x"})
    p = specs.parse_inference_service(obj)
    assert p is not None and p.spec is not None and p.spec.runtime == "triton-2.x"
    assert p.spec.labels() == frozenset({"rt:triton-2.x"})


def test_uri_params_override_storage_parameters_and_pvc_https() -> None:
    p = specs.parse_inference_service(isvc({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://real/p",
                                                      "storage": {"parameters": {"bucket": "other", "region": "eu"}}}}))
    assert p is not None and p.spec is not None and dict(p.spec.storage_params) == {"bucket": "real", "region": "eu", "type": "s3"}
    p = specs.parse_inference_service(isvc({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "pvc://models-pvc-1/sklearn/m.joblib"}}))
    assert p is not None and p.spec is not None and dict(p.spec.storage_params) == {"type": "pvc", "name": "models-pvc-1"}
    p = specs.parse_inference_service(yaml.safe_load((EXAMPLES / "isvc-https.yaml").read_text()))
    assert p is not None and p.spec is not None and p.spec.storage_params[0][0] == "type"
    assert dict(p.spec.storage_params)["url"] == "https://github.com?raw=true"


@pytest.mark.parametrize(
    ("predictor_spec", "annotations", "message"),
    [
        pytest.param({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p", "storage": {"path": "x"}}}, {},
                     "the InferenceService ns/m cannot have both the storageUri and the storage.path", id="both"),
        pytest.param({"model": {"modelFormat": {"name": "sklearn"}}}, {},
                     "the InferenceService ns/m must have either the storageUri or the storage.path", id="neither"),
        pytest.param({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p"}, "sklearn": {}}, {},
                     "cannot have both spec.predictor.model and spec.predictor.sklearn", id="model+framework"),
        pytest.param({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p"}}, {specs.RUNTIME_ANNOTATION: "x"},
                     "annotation", id="model+runtime-annotation"),
        pytest.param({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "ftp://b/p"}}, {},
                     "unsupported storageUri scheme", id="scheme"),
        pytest.param({}, {}, "No valid InferenceService predictor framework found", id="no-framework"),
        pytest.param({"sklearn": {"storageUri": "s3://b/p"}, "xgboost": {"storageUri": "s3://b/p"}}, {},
                     "exactly one predictor framework", id="two-frameworks"),
    ],
)
def test_isvc_invalid_specs(predictor_spec: dict[str, Any], annotations: dict[str, str], message: str) -> None:
    p = specs.parse_inference_service(isvc(predictor_spec, annotations))
    assert p is not None and p.spec is None and message in p.error
    assert p.model_id.startswith("m__isvc-")


def test_predictor_example_with_s3() -> None:
    p = specs.parse_predictor(yaml.safe_load((EXAMPLES / "example-sklearn-mnist-predictor.yaml").read_text()))
    assert p.spec is not None and p.spec.storage_key == "localMinIO" and p.spec.storage_path == "sklearn/mnist-svm.joblib"
    assert p.source == "ksp" and "__ksp-" in p.model_id


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param({"modelType": {"name": "x"}, "path": "a", "storage": {"path": "b"}}, specs.MSG_PATH_BOTH, id="path"),
        pytest.param({"modelType": {"name": "x"}, "schemaPath": "a", "storage": {"schemaPath": "b"}}, specs.MSG_SCHEMA_BOTH, id="schema"),
        pytest.param({"modelType": {"name": "x"}, "storage": {"persistentVolumeClaim": {"claimName": "c"}}}, specs.MSG_PVC, id="pvc"),
        pytest.param({"modelType": {"name": "x"}, "storage": {"s3": {"secretKey": "k"}, "key": "k2"}}, specs.MSG_S3_MIXED, id="s3-mixed"),
    ],
)
def test_predictor_validation_messages(spec: dict[str, Any], message: str) -> None:
    p = specs.parse_predictor(predictor(spec))
    assert p.spec is None and p.error == message


def test_predictor_new_storage_fields_and_runtime() -> None:
    p = specs.parse_predictor(predictor({"modelType": {"name": "sklearn", "version": "0"}, "runtime": {"name": "mlserver-1.x"},
                                         "storage": {"key": "k", "path": "p", "parameters": {"bucket": "b"}}}))
    assert p.spec is not None and p.spec.labels() == frozenset({"rt:mlserver-1.x"})
    assert p.spec.storage_key == "k" and dict(p.spec.storage_params) == {"bucket": "b"}


def test_deleting_flag() -> None:
    obj = predictor({"modelType": {"name": "x"}, "path": "p"})
    obj["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert specs.parse_predictor(obj).deleting


def test_equivalent_specs_share_an_id_and_changes_make_a_new_one() -> None:
    a = specs.parse_inference_service(isvc({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p"}}))
    b = specs.parse_inference_service(isvc({"model": {"modelFormat": {"name": "sklearn"},
                                                      "storage": {"path": "p", "parameters": {"type": "s3", "bucket": "b"}}}}))
    c = specs.parse_inference_service(isvc({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p2"}}))
    assert a is not None and b is not None and c is not None
    assert a.model_id == b.model_id != c.model_id


@given(st.text(min_size=1, max_size=20), st.text(max_size=20), st.text(max_size=30))
def test_model_id_is_deterministic_and_name_prefixed(fmt: str, version: str, path: str) -> None:
    obj = isvc({"model": {"modelFormat": {"name": fmt, "version": version}, "storage": {"path": path or "x"}}})
    one, two = specs.parse_inference_service(obj), specs.parse_inference_service(copy.deepcopy(obj))
    assert one is not None and two is not None
    assert one.model_id == two.model_id and one.model_id.startswith("m__isvc-")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12))
def test_garbage_predictor_specs_never_crash(garbage: Any) -> None:
    obj = isvc({})
    obj["spec"]["predictor"] = garbage
    p = specs.parse_inference_service(obj)
    assert p is not None and (p.spec is not None or p.error)
    q = specs.parse_predictor(predictor({"modelType": garbage, "storage": garbage}))
    assert q.spec is not None or q.error
