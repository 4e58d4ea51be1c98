"""Storage in the rendered runtime Deployments: the node model cache volume and allowAnyPVC.

Every manifest is checked with kubernetes-validate in strict mode (unknown fields rejected),
and its puller env against the puller's settings, so what the controller renders is what
the puller reads.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from meshserve.controller import deployments as deploy
from meshserve.controller import reconcile as rc
from meshserve.controller import runtimes as rts
from meshserve.controller import specs
from meshserve.controller.serving_config import ServingConfig, parse_config_yaml
from meshserve.controller.storage_config import parse_storage_secret
from meshserve.puller.settings import PullerSettings

REPO = Path(__file__).resolve().parents[4]
RUNTIMES = {
    rt.name: rt
    for rt in (rts.parse_runtime(yaml.safe_load(p.read_text()), cluster_scoped=True)
               for p in (REPO / "deploy/kustomize/base/runtimes").glob("*.yaml"))
}
ML = RUNTIMES["mlserver-1.x"]
SECRET = parse_storage_secret({"pvc": '{"type": "pvc", "name": "models-pvc-1"}'}, base64_encoded=False)
ANY_PVC = parse_config_yaml("allowAnyPVC: true\n").config


def annotated(runtime: rts.Runtime, **annotations: str) -> rts.Runtime:
    return replace(runtime, annotations=tuple(sorted({**dict(runtime.annotations), **annotations}.items())))


def render(runtime: rts.Runtime = ML, *, config: ServingConfig | None = None, claims: tuple[str, ...] = ()) -> dict[str, Any]:
    manifest = deploy.build_runtime_deployment(
        runtime=runtime, config=config or ServingConfig(), namespace="ns", replicas=1, storage=SECRET,
        scheduler_address="meshserve-scheduler:8034", pvc_claims=claims,
    )
    kubernetes_validate.validate(manifest, "1.32", strict=True)
    return manifest


def pod_parts(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict[str, dict[str, Any]]]:
    pod = manifest["spec"]["template"]["spec"]
    puller = next(c for c in pod["containers"] if c["name"] == "puller")
    env = {e["name"]: e.get("value") for e in puller["env"]}
    return puller, env, {v["name"]: v for v in pod["volumes"]}


def isvc(name: str, uri: str, *, fmt: str = "sklearn", params: dict[str, str] | None = None) -> specs.PredictorCR:
    model: dict[str, Any] = {"modelFormat": {"name": fmt}}
    if params is None:
        model["storageUri"] = uri
    else:
        model["storage"] = {"path": uri, "parameters": params}
    obj = {"metadata": {"name": name, "namespace": "ns", "annotations": {specs.DEPLOYMENT_MODE_ANNOTATION: "ModelMesh"}},
           "spec": {"predictor": {"model": model}}}
    p = specs.parse_inference_service(obj)
    assert p is not None and p.spec is not None, p
    return p


# --- the node model cache -------------------------------------------------------------------


def test_by_default_the_puller_gets_an_emptydir_cache_bounded_by_the_models_dir() -> None:
    puller, env, volumes = pod_parts(render())
    models_limit = int(volumes["models-dir"]["emptyDir"]["sizeLimit"])
    assert env["MESHSERVE_PULLER_CACHE_DIR"] == deploy.MODEL_CACHE_DIR
    assert env["MESHSERVE_PULLER_CACHE_MAX_BYTES"] == str(models_limit)
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {"sizeLimit": str(2 * models_limit)}}
    assert {"name": "model-cache", "mountPath": deploy.MODEL_CACHE_DIR} in puller["volumeMounts"]
    # only the puller writes the cache; the model server reads what the puller puts in /models
    pod = render()["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "mlserver")
    assert all(m["name"] != "model-cache" for m in server["volumeMounts"])


def test_a_host_path_cache_is_shared_on_the_node_with_the_annotated_bound() -> None:
    runtime = annotated(ML, **{rts.MODEL_CACHE_ANNOTATION: "hostPath:/var/lib/meshserve/model-cache/",
                               rts.MODEL_CACHE_SIZE_ANNOTATION: "50Gi"})
    assert rts.validate_runtime(runtime, built_in_server_types=ServingConfig().built_in_server_types) == []
    _, env, volumes = pod_parts(render(runtime))
    assert volumes["model-cache"] == {
        "name": "model-cache", "hostPath": {"path": "/var/lib/meshserve/model-cache", "type": "DirectoryOrCreate"},
    }
    assert env["MESHSERVE_PULLER_CACHE_MAX_BYTES"] == str(50 << 30)
    assert PullerSettings(cache_dir=env["MESHSERVE_PULLER_CACHE_DIR"], cache_max_bytes=env["MESHSERVE_PULLER_CACHE_MAX_BYTES"]).cache_dir == Path(deploy.MODEL_CACHE_DIR)


def test_an_emptydir_cache_size_annotation_sets_both_bounds() -> None:
    _, env, volumes = pod_parts(render(annotated(ML, **{rts.MODEL_CACHE_SIZE_ANNOTATION: "2G"})))
    assert env["MESHSERVE_PULLER_CACHE_MAX_BYTES"] == str(2 * 10**9)
    assert volumes["model-cache"]["emptyDir"]["sizeLimit"] == str(4 * 10**9)


def test_the_cache_can_be_turned_off() -> None:
    puller, env, volumes = pod_parts(render(annotated(ML, **{rts.MODEL_CACHE_ANNOTATION: "none"})))
    assert "model-cache" not in volumes and "MESHSERVE_PULLER_CACHE_DIR" not in env
    assert all(m["name"] != "model-cache" for m in puller["volumeMounts"])


def test_a_runtime_without_a_puller_gets_no_cache_volume() -> None:
    runtime = replace(ML, storage_helper_disabled=True)
    pod = render(runtime)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["mlserver"]
    assert all(v["name"] != "model-cache" for v in pod["volumes"])


@pytest.mark.parametrize(("annotations", "message"), [
    ({rts.MODEL_CACHE_ANNOTATION: "hostPath:relative/dir"}, "must be emptyDir, none or hostPath:/<absolute node folder>"),
    ({rts.MODEL_CACHE_ANNOTATION: "hostPath:/var/../etc"}, "hostPath:/<absolute node folder>"),
    ({rts.MODEL_CACHE_ANNOTATION: "hostPath:/"}, "hostPath:/<absolute node folder>"),
    ({rts.MODEL_CACHE_ANNOTATION: "tmpfs"}, "must be emptyDir, none or hostPath"),
    ({rts.MODEL_CACHE_SIZE_ANNOTATION: "lots"}, "must be a positive quantity such as 20Gi"),
    ({rts.MODEL_CACHE_SIZE_ANNOTATION: "0Gi"}, "must be a positive quantity"),
    ({rts.MODEL_CACHE_SIZE_ANNOTATION: "-1Gi"}, "must be a positive quantity"),
], ids=["relative", "dotdot", "root", "unknown", "size-word", "size-zero", "size-negative"])
def test_bad_cache_annotations_make_the_runtime_invalid(annotations: dict[str, str], message: str) -> None:
    runtime = annotated(ML, **annotations)
    errors = rts.validate_runtime(runtime, built_in_server_types=ServingConfig().built_in_server_types)
    assert any(message in e for e in errors), errors
    plan = rc.plan_runtimes(
        runtimes={runtime.name: runtime}, predictors=[isvc("m", "s3://b/p")], observed={}, records={},
        config=ServingConfig(), namespace="ns", storage=SECRET, scheduler_address="s:8034", now=0.0,
    )
    assert plan.actions == () and runtime.name in plan.invalid  # never deployed with a cache it did not ask for


def test_a_user_volume_named_model_cache_is_refused() -> None:
    spec = {**ML.spec, "volumes": [{"name": "model-cache", "emptyDir": {}}]}
    errors = rts.validate_runtime(replace(ML, spec=spec), built_in_server_types=ServingConfig().built_in_server_types)
    assert "volume name 'model-cache' is reserved" in errors


# --- allowAnyPVC ----------------------------------------------------------------------------


PREDICTORS = [
    isvc("uri", "pvc://models-pvc-3/sklearn/mnist-svm.joblib"),
    isvc("params", "sklearn/model.joblib", params={"type": "pvc", "name": "claim.with.dots"}),
    isvc("onnx", "pvc://onnx-claim/model.onnx", fmt="onnx"),     # served by triton, not mlserver
    isvc("s3", "s3://bucket/model.joblib"),
    isvc("bad-name", "sklearn/m", params={"type": "pvc", "name": "Not_A_Claim"}),
]


def claims_for(runtime: str, config: ServingConfig) -> tuple[str, ...]:
    return deploy.predictor_pvc_claims(PREDICTORS, runtime_name=runtime, runtimes=RUNTIMES, config=config)


def test_allow_any_pvc_mounts_the_claims_of_the_runtimes_own_predictors_read_only() -> None:
    claims = claims_for("mlserver-1.x", ANY_PVC)
    assert claims == ("claim.with.dots", "models-pvc-3")
    assert claims_for("triton-2.x", ANY_PVC) == ("onnx-claim",)
    puller, _, volumes = pod_parts(render(config=ANY_PVC, claims=claims))
    mounts = {m["mountPath"]: m for m in puller["volumeMounts"]}
    pvc_root = PullerSettings().pvc_mounts_dir
    for claim in ("models-pvc-1", "models-pvc-3", "claim.with.dots"):   # the Secret's, and the predictors'
        mount = mounts[f"{pvc_root}/{claim}"]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    # a claim name that is not a valid volume name gets a hashed one (still strict-valid, above)
    assert mounts[f"{pvc_root}/claim.with.dots"]["name"].startswith("pvc-") and "." not in mounts[f"{pvc_root}/claim.with.dots"]["name"]
    assert f"{pvc_root}/onnx-claim" not in mounts


def test_without_allow_any_pvc_only_the_secrets_claims_are_mounted() -> None:
    assert claims_for("mlserver-1.x", ServingConfig()) == ()
    puller, _, _ = pod_parts(render())
    assert sorted(m["mountPath"] for m in puller["volumeMounts"] if m["mountPath"].startswith("/pvc_mounts/")) == [
        "/pvc_mounts/models-pvc-1"
    ]


def test_deleting_and_invalid_predictors_name_no_claims() -> None:
    gone = isvc("gone", "pvc://gone-claim/m.joblib")
    gone = replace(gone, deleting=True)
    broken = replace(isvc("broken", "pvc://broken-claim/m.joblib"), spec=None, error="bad")
    assert deploy.predictor_pvc_claims([gone, broken], runtime_name="mlserver-1.x", runtimes=RUNTIMES, config=ANY_PVC) == ()


def test_a_new_claim_changes_the_spec_hash_so_the_deployment_is_patched() -> None:
    before = render(config=ANY_PVC)["metadata"]["annotations"][deploy.SPEC_HASH_ANNOTATION]
    after = render(config=ANY_PVC, claims=("models-pvc-3",))["metadata"]["annotations"][deploy.SPEC_HASH_ANNOTATION]
    assert before != after
