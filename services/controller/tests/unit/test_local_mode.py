"""Local-mode pieces without processes: which CR a scheduler change belongs to, the puller
identity taken from a planned Deployment, and `meshserve apply`'s per-document checks."""

from __future__ import annotations

from pathlib import Path

from meshserve.cli import resources
from meshserve.cli.runtimes_local import puller_env
from meshserve.controller import deployments
from meshserve.controller.runtimes import parse_runtime
from meshserve.controller.serving_config import ServingConfig
from meshserve.controller.storage_config import StorageConfig
from meshserve.controller.watched import owner_kind

EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "isvc"


def test_owner_kind_from_model_and_vmodel_ids() -> None:
    assert owner_kind("example-sklearn-isvc__isvc-3642375d03") == ("InferenceService", "example-sklearn-isvc")
    assert owner_kind("my-pred__ksp-0123456789") == ("Predictor", "my-pred")
    assert owner_kind("plain-vmodel") == ("", "plain-vmodel")


def test_puller_env_comes_from_the_planned_deployment() -> None:
    doc = resources.load_documents([str(EXAMPLES / "mlserver-1.x-servingruntime.yaml")])[0].body
    manifest = deployments.build_runtime_deployment(
        runtime=parse_runtime(doc, cluster_scoped=False), config=ServingConfig(), namespace="default", replicas=1,
        storage=StorageConfig(), scheduler_address="127.0.0.1:8034",
    )
    runnable, env = puller_env(manifest)
    assert runnable
    assert env["MESHSERVE_PULLER_RUNTIME"] == "mlserver-1.x"
    assert env["MESHSERVE_PULLER_SUPPORTED_FORMATS"] == "sklearn:0,xgboost:1,lightgbm:3"
    assert "MESHSERVE_PULLER_POD_ID" not in env and all("$(" not in v for v in env.values())


def test_apply_checks_each_document() -> None:
    def check(body: object) -> list[str]:
        return resources.validate(resources.Document("f.yaml", 1, body))

    assert check({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "s"}})[0].startswith("kind 'Pod' is not supported")
    # a Secret is kept (the storage-config one); its keys must be storage configs, named in the errors
    assert check({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}) == [
        "data or stringData: a storage-config Secret needs at least one key"
    ]
    assert check({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "kubernetes.io/tls",
                  "stringData": {"k": '{"type": "s3"}'}}) == [
        "type: 'kubernetes.io/tls' is not supported here (a storage-config Secret is Opaque)"
    ]
    assert check({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                  "stringData": {"k": '{"bucket": "b", "secret_access_key": "hidden-value"}'}}) == [
        "key 'k': missing the 'type' field (s3, gcs, azure, http or pvc)"
    ]
    assert check({"kind": "InferenceService"}) == ["metadata.name: required"]
    runtime = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime", "metadata": {"name": "r"},
               "spec": {"containers": [{"name": "mm", "image": "x"}], "supportedModelFormats": [{"name": "a"}]}}
    assert check(runtime) == ["container name 'mm' is reserved"]
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-serving-config"},
              "data": {"config.yaml": "podsPerRuntime: -1"}}
    assert check(config) == ["data: podsPerRuntime: must be between 0 and 65535, got -1"]
    # valid by schema, wrong for ModelMesh: accepted (the controller reports InvalidSpec), as in a cluster
    both = resources.load_documents([str(EXAMPLES / "example-mlserver-sklearn-mnist-isvc.yaml")])[0].body
    both["spec"]["predictor"]["model"]["storageUri"] = "s3://b/p"
    assert check(both) == []


def test_a_valid_config_with_a_mistyped_key_is_taken_with_a_warning_naming_the_nearest_key() -> None:
    doc = resources.Document("f.yaml", 1, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-serving-config"},
                                           "data": {"config.yaml": "podsPerRuntim: 1\n"}})
    assert resources.validate(doc) == []
    [warning] = resources.config_warnings(doc)
    assert "podsPerRuntim" in warning and "podsPerRuntime" in warning
    other = resources.Document("f.yaml", 2, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"},
                                             "data": {"config.yaml": "podsPerRuntim: 1\n"}})
    assert resources.config_warnings(other) == []


def test_get_columns_follow_the_status() -> None:
    obj = {"metadata": {"name": "m", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "status": {"url": "grpc://x:8033", "conditions": [{"type": "Ready", "status": "True"}],
                      "modelStatus": {"transitionStatus": "UpToDate", "states": {"activeModelState": "Loaded"}}}}
    header, rows = resources.rows_for("InferenceService", [obj])
    assert header[:6] == ["NAME", "URL", "READY", "ACTIVE", "TARGET", "TRANSITION"]
    assert rows[0][:6] == ["m", "grpc://x:8033", "True", "Loaded", "", "UpToDate"]
