"""The storage-config Secret in local mode, over the whole stack as processes: `meshserve apply`
stores a Secret with a new S3 key, the local controller writes the key's file for the runtime
pods, and a model using that key loads from moto through the pod that was already running:
nothing restarted. Also: `get secrets` / `get secret` show names, keys and types, never a
value; a changed key takes effect for the next load; a bad Secret is refused by key and field;
and `pvc://<claim>/...` reads the stack's `<root>/pvc/<claim>` folder.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import yaml

from meshserve.cli.devstack import Stack, StackConfig

from .conftest import EXAMPLES, wait_for
from .test_controller_local import infer, run_cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_YAML = ROOT / "examples" / "isvc" / "mlserver-1.x-servingruntime.yaml"
ISVC_YAML = ROOT / "examples" / "isvc" / "example-mlserver-sklearn-mnist-isvc.yaml"
NEW_BUCKET = "secret-models"
NEW_ACCESS_KEY = "AKIANEWKEYFORTHETEST"
NEW_SECRET = "n3w-Secret/Value+for-the-local-storage-key"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("storage-secret"))
    stack = Stack(StackConfig.from_env(root, pods=0, isolate=True, extra_env={"MESHSERVE_SCHEDULER_POD_TIMEOUT_SECONDS": "5"}))
    try:
        stack.start_infra()
        stack.migrate()
        stack.start_scheduler()
        stack.start_router()
        stack.upload_examples(EXAMPLES)
        s3 = stack.s3_client()
        s3.create_bucket(Bucket=NEW_BUCKET)
        s3.upload_file(str(EXAMPLES / "sklearn" / "mnist-svm.joblib"), NEW_BUCKET, "private/mnist-svm.joblib")
        s3.upload_file(str(EXAMPLES / "sklearn" / "mnist-svm.joblib"), NEW_BUCKET, "moved/mnist-svm.joblib")
        stack.start_controller(timeout=180)
        yield stack
    finally:
        stack.stop()


def apply(stack: Stack, *docs: dict[str, Any]) -> tuple[int, str, str]:
    return run_cli("apply", "-f", "-", "--admin", stack.admin_url, stdin=yaml.safe_dump_all(docs))


def s3_key(bucket: str = NEW_BUCKET, *, endpoint: str) -> dict[str, str]:
    return {"type": "s3", "access_key_id": NEW_ACCESS_KEY, "secret_access_key": NEW_SECRET,
            "endpoint_url": endpoint, "bucket": bucket, "region": "us-east-1"}


def secret(**keys: dict[str, str]) -> dict[str, Any]:
    """A storage-config Secret: the first key as base64 `data`, the others as `stringData`."""
    items = list(keys.items())
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "storage-config"}, "type": "Opaque"}
    if items:
        first, value = items[0]
        doc["data"] = {first: base64.b64encode(json.dumps(value).encode()).decode()}
    if items[1:]:
        doc["stringData"] = {k: json.dumps(v) for k, v in items[1:]}
    return doc


def isvc(name: str, *, uri: str | None = None, key: str | None = None, path: str | None = None) -> dict[str, Any]:
    doc = yaml.safe_load(ISVC_YAML.read_text())
    doc["metadata"]["name"] = name
    model = doc["spec"]["predictor"]["model"]
    if uri is not None:
        model.pop("storage", None)
        model["storageUri"] = uri
    if key is not None and "storage" in model:
        model["storage"]["key"] = key
    elif key is not None:
        doc["metadata"].setdefault("annotations", {})["serving.kserve.io/secretKey"] = key
    if path is not None:
        model["storage"]["path"] = path
    return doc  # type: ignore[no-any-return]


def status(stack: Stack, name: str) -> dict[str, Any]:
    obj = stack.admin("GET", f"/v1/resources/InferenceService/default/{name}").json()
    return (obj.get("status") or {}).get("modelStatus") or {}


def registered(stack: Stack, name: str) -> None:
    wait_for(lambda: stack.admin("GET", f"/v1/vmodels/{name}").status_code == 200, timeout=60, what=f"{name} registered")


def loaded(stack: Stack, name: str) -> dict[str, Any]:
    """The first request loads the model (no minCopies), then its status says Loaded."""
    registered(stack, name)
    assert infer(stack, name)[0] == [[8]]
    return wait_for(lambda: (s := status(stack, name)).get("states", {}).get("activeModelState") == "Loaded" and s,
                    timeout=90, what=f"{name} Loaded")


def failed(stack: Stack, name: str) -> dict[str, Any]:
    """The first request fails the load; the status then says FailedToLoad."""
    registered(stack, name)
    with pytest.raises(grpcclient.InferenceServerException):
        infer(stack, name)
    return wait_for(lambda: (s := status(stack, name)).get("states", {}).get("activeModelState") == "FailedToLoad" and s,
                    timeout=90, what=f"{name} FailedToLoad")


def pods(stack: Stack) -> dict[str, str]:
    """pod id -> model server address (a restarted pod gets new ports)."""
    return {p["id"]: p["grpcAddress"] for p in stack.admin("GET", "/v1/pods").json()["items"] if p["runtime"] == "mlserver-1.x"}


def test_a_new_key_applied_as_a_secret_loads_a_model_without_restarting_anything(stack: Stack) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-serving-config"},
              "data": {"config.yaml": "podsPerRuntime: 1\n"}}
    rc, _, err = apply(stack, config)
    assert rc == 0, err
    rc, _, err = run_cli("apply", "-f", str(RUNTIME_YAML), "-f", str(ISVC_YAML), "--admin", stack.admin_url)
    assert rc == 0, err
    first = yaml.safe_load(ISVC_YAML.read_text())["metadata"]["name"]
    wait_for(lambda: pods(stack), timeout=180, what="a runtime pod started by the controller")
    loaded(stack, first)
    before = pods(stack)
    assert len(before) == 1

    rc, out, err = apply(stack, secret(newS3=s3_key(endpoint=stack.s3_endpoint)))
    assert rc == 0, err
    assert "secret/storage-config created" in out and NEW_SECRET not in out
    # the controller writes the key where the pullers read it asynchronously (as a kubelet updates a
    # mounted Secret): a load that comes first fails with "storage secretKey not found"
    key_file = stack.storage_config_dir / "newS3"
    wait_for(key_file.exists, timeout=60, what="the new key written for the pullers")
    rc, _, err = apply(stack, isvc("secret-keyed", uri=f"s3://{NEW_BUCKET}/private/mnist-svm.joblib", key="newS3"))
    assert rc == 0, err
    loaded(stack, "secret-keyed")
    assert pods(stack) == before, "the runtime pod was not restarted"
    # the key file the puller read: written by the controller, private to its user
    assert json.loads(key_file.read_text())["bucket"] == NEW_BUCKET
    assert key_file.stat().st_mode & 0o077 == 0
    assert (stack.storage_config_dir / "localMinIO").exists(), "the stack's own keys are left alone"


def test_get_shows_names_keys_and_types_never_values(stack: Stack) -> None:
    rc, out, err = run_cli("get", "secrets", "--admin", stack.admin_url)
    assert rc == 0, err
    assert "storage-config" in out and "newS3" in out and "Opaque" in out
    rc, out, err = run_cli("get", "secret", "storage-config", "--admin", stack.admin_url)
    assert rc == 0, err
    assert out.split("\n")[1].split() == ["newS3", "s3", "ok"]
    for text in (out, err):
        assert NEW_SECRET not in text and NEW_ACCESS_KEY not in text and base64.b64encode(NEW_SECRET.encode()).decode()[:16] not in text
    rc, _, err = run_cli("get", "secret", "no-such-secret", "--admin", stack.admin_url)
    assert rc == 1 and 'secrets "no-such-secret" not found' in err


def test_a_changed_key_is_used_by_the_next_load(stack: Stack) -> None:
    before = pods(stack)
    # the key now points at another bucket: the same path there does not exist, the new one does
    rc, _, err = apply(stack, secret(newS3=s3_key("modelmesh-example-models", endpoint=stack.s3_endpoint),
                                     movedS3=s3_key(endpoint=stack.s3_endpoint)))
    assert rc == 0, err
    wait_for(lambda: json.loads((stack.storage_config_dir / "newS3").read_text())["bucket"] == "modelmesh-example-models",
             timeout=30, what="the changed key's file")
    rc, _, err = apply(stack, isvc("moved-key", uri=f"s3://{NEW_BUCKET}/moved/mnist-svm.joblib", key="movedS3"),
                       isvc("changed-key", key="newS3", path="sklearn/mnist-svm.joblib"))
    assert rc == 0, err
    loaded(stack, "moved-key")
    loaded(stack, "changed-key")   # the example bucket's copy, through the changed key
    assert pods(stack) == before


def test_a_removed_key_is_removed_for_the_pods(stack: Stack) -> None:
    rc, _, err = apply(stack, secret(movedS3=s3_key(endpoint=stack.s3_endpoint)))
    assert rc == 0, err
    wait_for(lambda: not (stack.storage_config_dir / "newS3").exists(), timeout=30, what="newS3's file removed")
    rc, _, err = apply(stack, isvc("gone-key", key="newS3", path="sklearn/mnist-svm.joblib"))
    assert rc == 0, err
    failure = failed(stack, "gone-key")
    message = failure["lastFailureInfo"]["message"]
    assert "Storage secretKey not found: newS3" in message and NEW_SECRET not in message


@pytest.mark.parametrize(("doc", "message"), [
    ({"stringData": {"k": "{not json"}}, "key 'k': value is not valid (base64-encoded) JSON"),
    ({"stringData": {"k": '{"bucket": "b"}'}}, "key 'k': missing the 'type' field"),
    ({"data": {"k": "%%%"}}, "data['k']: the value is not valid base64"),
    ({"stringData": {"a/b": "{}"}}, "a key must consist of letters, digits"),
    ({"stringData": {}}, "needs at least one key"),
    ({"metadata": {"name": "other-secret"}, "stringData": {"k": '{"type": "s3"}'}}, "only the storage-config Secret"),
], ids=["not-json", "no-type", "not-base64", "bad-key", "empty", "other-name"])
def test_a_bad_secret_is_refused_by_key_and_field(stack: Stack, doc: dict[str, Any], message: str) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "storage-config"}, **doc}
    rc, out, err = apply(stack, body)
    assert rc == 1 and message in err, err
    assert "created" not in out and "configured" not in out


def test_a_pvc_uri_reads_the_stacks_claim_folder(stack: Stack) -> None:
    claim = stack.pvc_mounts_dir / "models-pvc-1" / "sklearn"
    claim.mkdir(parents=True)
    shutil.copy(EXAMPLES / "sklearn" / "mnist-svm.joblib", claim / "mnist-svm.joblib")
    rc, _, err = apply(stack, isvc("from-pvc", uri="pvc://models-pvc-1/sklearn/mnist-svm.joblib"),
                       isvc("missing-pvc", uri="pvc://models-pvc-9/sklearn/mnist-svm.joblib"))
    assert rc == 0, err
    loaded(stack, "from-pvc")
    failure = failed(stack, "missing-pvc")
    assert "PVC 'models-pvc-9' is not mounted" in failure["lastFailureInfo"]["message"]
