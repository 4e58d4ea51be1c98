from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.controller import deployments as deploy
from meshserve.controller import hpa, specs
from meshserve.controller import reconcile as rc
from meshserve.controller import runtimes as rts
from meshserve.controller.serving_config import ServingConfig, parse_config_yaml
from meshserve.controller.storage_config import parse_storage_secret

REPO = Path(__file__).resolve().parents[4]
RUNTIMES = {
    rt.name: rt
    for rt in (rts.parse_runtime(yaml.safe_load(p.read_text()), cluster_scoped=True)
               for p in (REPO / "deploy/kustomize/base/runtimes").glob("*.yaml"))
}
CONFIG = parse_config_yaml("scaleToZero:\n  enabled: true\n  gracePeriodSeconds: 5\n").config
STORAGE = parse_storage_secret({"pvc": '{"type": "pvc", "name": "models-pvc-1"}'}, base64_encoded=False)
ML = "modelmesh-serving-mlserver-1.x"


def sklearn(name: str = "m", deleting: bool = False) -> specs.PredictorCR:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": "ns", "annotations": {specs.DEPLOYMENT_MODE_ANNOTATION: "ModelMesh"}},
                           "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p"}}}}
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    p = specs.parse_inference_service(obj)
    assert p is not None
    return p


def plan(predictors: list[specs.PredictorCR], observed: dict[str, rc.ObservedDeployment], records: dict[str, rc.RuntimeRecord],
         now: float, config: ServingConfig = CONFIG, runtimes: dict[str, rts.Runtime] | None = None) -> rc.RuntimePlan:
    return rc.plan_runtimes(runtimes=RUNTIMES if runtimes is None else runtimes, predictors=predictors, observed=observed,
                            records=records, config=config, namespace="ns", storage=STORAGE,
                            scheduler_address="meshserve-scheduler:8034", now=now)


def apply(result: rc.RuntimePlan, observed: dict[str, rc.ObservedDeployment]) -> dict[str, rc.ObservedDeployment]:
    out = dict(observed)
    for a in result.actions:
        if a.kind is rc.ActionKind.DELETE:
            out.pop(a.name)
        elif a.kind in (rc.ActionKind.CREATE, rc.ActionKind.PATCH):
            assert a.manifest is not None
            out[a.name] = rc.ObservedDeployment(a.name, a.replicas, a.manifest["metadata"]["annotations"][deploy.SPEC_HASH_ANNOTATION])
        else:
            out[a.name] = replace(out[a.name], replicas=a.replicas)
    return out


def replicas(observed: dict[str, rc.ObservedDeployment], name: str = ML) -> int | None:
    return observed[name].replicas if name in observed else None


def test_first_reconcile_creates_deployment_for_used_runtime_only() -> None:
    result = plan([sklearn()], {}, {}, now=0)
    created = {a.name: a for a in result.actions}
    assert set(created) == {ML}
    assert created[ML].kind is rc.ActionKind.CREATE and created[ML].replicas == CONFIG.pods_per_runtime
    # nothing else to do on the next pass
    again = plan([sklearn()], apply(result, {}), result.records, now=1)
    assert again.actions == ()


def _claims(manifest: dict[str, Any]) -> set[str]:
    return {v["persistentVolumeClaim"]["claimName"] for v in manifest["spec"]["template"]["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v}


def test_allow_any_pvc_mounts_the_claims_the_predictors_name_and_only_then() -> None:
    def on_pvc(name: str, claim: str) -> specs.PredictorCR:
        obj: dict[str, Any] = {"metadata": {"name": name, "namespace": "ns",
                                            "annotations": {specs.DEPLOYMENT_MODE_ANNOTATION: "ModelMesh"}},
                               "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                                                "storageUri": f"pvc://{claim}/models/m"}}}}
        p = specs.parse_inference_service(obj)
        assert p is not None
        return p

    predictors = [on_pvc("a", "claim-a"), on_pvc("b", "claim-b"), sklearn("c")]
    anyp = replace(CONFIG, allow_any_pvc=True)
    [created] = [a for a in plan(predictors, {}, {}, now=0, config=anyp).actions if a.name == ML]
    assert created.manifest is not None
    assert _claims(created.manifest) == {"models-pvc-1", "claim-a", "claim-b"}   # the Secret's claim and theirs
    [created] = [a for a in plan(predictors, {}, {}, now=0).actions if a.name == ML]
    assert created.manifest is not None and _claims(created.manifest) == {"models-pvc-1"}


def test_scale_to_zero_timer_rules_like_the_fvt() -> None:
    r1 = plan([sklearn()], {}, {}, now=0)
    obs = apply(r1, {})
    # predictor deleted: still up at +1 s, requeue for the remaining grace, 0 at >= 5 s
    r2 = plan([], obs, dict(r1.records), now=10)
    assert r2.actions == () and r2.requeue_after == pytest.approx(5.0)
    r3 = plan([], obs, dict(r2.records), now=11)
    assert r3.actions == () and r3.requeue_after == pytest.approx(4.0)
    r4 = plan([], obs, dict(r3.records), now=15.5)
    obs4 = apply(r4, obs)
    assert replicas(obs4) == 0
    # deleted and recreated within the grace period: stays up, timer cleared
    r5 = plan([], obs, dict(r1.records), now=20)
    r6 = plan([sklearn()], obs, dict(r5.records), now=22)
    assert r6.actions == () and r6.records["mlserver-1.x"].unused_since is None
    r7 = plan([sklearn()], obs, dict(r6.records), now=40)
    assert r7.actions == ()


def test_scaled_to_zero_runtime_comes_back_when_used() -> None:
    obs = {ML: rc.ObservedDeployment(ML, 0, plan([sklearn()], {}, {}, now=0).actions[0].manifest["metadata"]["annotations"][deploy.SPEC_HASH_ANNOTATION])}  # type: ignore[index]
    result = plan([sklearn()], obs, {"mlserver-1.x": rc.RuntimeRecord(in_use=False)}, now=100)
    assert [(a.kind, a.replicas) for a in result.actions] == [(rc.ActionKind.SCALE, 2)]


def test_deleting_predictor_does_not_keep_runtime_and_scale_to_zero_disabled_keeps_all() -> None:
    assert plan([sklearn(deleting=True)], {}, {}, now=0).actions == ()
    no_stz = parse_config_yaml("scaleToZero:\n  enabled: false").config
    names = {a.name for a in plan([], {}, {}, now=0, config=no_stz).actions}
    assert names == {f"modelmesh-serving-{n}" for n in RUNTIMES}


def test_disabled_or_removed_runtime_deployment_is_deleted_and_unmanaged_ones_are_left_alone() -> None:
    obs = apply(plan([sklearn()], {}, {}, now=0), {})
    disabled = dict(RUNTIMES)
    disabled["mlserver-1.x"] = replace(RUNTIMES["mlserver-1.x"], disabled=True)
    result = plan([sklearn()], obs, {}, now=1, runtimes=disabled)
    assert [(a.kind, a.name) for a in result.actions] == [(rc.ActionKind.DELETE, ML)]
    foreign = {"modelmesh-serving-other": rc.ObservedDeployment("modelmesh-serving-other", 1, "x", managed=False)}
    assert plan([], foreign, {}, now=0).actions == ()


def test_spec_change_patches_and_replicas_override() -> None:
    obs = apply(plan([sklearn()], {}, {}, now=0), {})
    changed = dict(RUNTIMES)
    changed["mlserver-1.x"] = replace(RUNTIMES["mlserver-1.x"], replicas=3)
    result = plan([sklearn()], obs, {}, now=1, runtimes=changed)
    assert [(a.kind, a.replicas) for a in result.actions] == [(rc.ActionKind.SCALE, 3)]
    new_cfg = replace(CONFIG, storage_helper_image=replace(CONFIG.storage_helper_image, tag="v9"))
    result = plan([sklearn()], obs, {}, now=1, config=new_cfg)
    assert [a.kind for a in result.actions] == [rc.ActionKind.PATCH]


def test_deployment_manifest_is_valid_kubernetes_and_has_the_puller() -> None:
    manifest = deploy.build_runtime_deployment(runtime=RUNTIMES["mlserver-1.x"], config=ServingConfig(), namespace="ns",
                                               replicas=2, storage=STORAGE, scheduler_address="meshserve-scheduler:8034")
    kubernetes_validate.validate(manifest, "1.32", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["mlserver", "puller"]
    puller = pod["containers"][1]
    env = {e["name"]: e.get("value") for e in puller["env"]}
    assert env["MESHSERVE_PULLER_RUNTIME"] == "mlserver-1.x"
    assert env["MESHSERVE_PULLER_CAPACITY_BYTES"] == str(2**30 - 134217728)
    assert env["MESHSERVE_PULLER_SUPPORTED_FORMATS"] == "sklearn:0,xgboost:1,lightgbm:3"
    assert env["MESHSERVE_PULLER_PROTOCOL_VERSIONS"] == "grpc-v2,v2"
    assert {"/models", "/storage-config", "/pvc_mounts/models-pvc-1"} <= {m["mountPath"] for m in puller["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models-dir"]["emptyDir"]["sizeLimit"] == str(int(2**30 * 1.5))
    assert volumes["storage-config"]["secret"]["secretName"] == "storage-config"
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert labels["modelmesh-service"] == "modelmesh-serving" and labels["name"] == ML
    assert manifest["metadata"]["name"] == ML


def test_declared_default_model_size_reaches_the_puller() -> None:
    """Upstream adapters take `DEFAULT_MODELSIZE` from builtInAdapter.env; the puller reports
    it to the scheduler as the runtime's default model size."""
    base = RUNTIMES["mlserver-1.x"]
    assert base.built_in_adapter is not None

    def puller_env(runtime: rts.Runtime) -> dict[str, str | None]:
        manifest = deploy.build_runtime_deployment(runtime=runtime, config=ServingConfig(), namespace="ns",
                                                   replicas=1, storage=STORAGE, scheduler_address="s:8034")
        return {e["name"]: e.get("value") for e in manifest["spec"]["template"]["spec"]["containers"][1]["env"]}

    def with_env(value: str) -> rts.Runtime:
        return replace(base, built_in_adapter=replace(base.built_in_adapter, env=(("DEFAULT_MODELSIZE", value),)))

    assert "MESHSERVE_PULLER_DEFAULT_MODEL_SIZE_BYTES" not in puller_env(base)
    assert puller_env(with_env("5000000"))["MESHSERVE_PULLER_DEFAULT_MODEL_SIZE_BYTES"] == "5000000"
    for bad in ("", "5Mi", "-1", "0"):
        assert "MESHSERVE_PULLER_DEFAULT_MODEL_SIZE_BYTES" not in puller_env(with_env(bad)), bad


def test_puller_env_matches_puller_settings() -> None:
    from meshserve.puller.settings import PullerSettings  # same repository: always importable
    manifest = deploy.build_runtime_deployment(runtime=RUNTIMES["mlserver-1.x"], config=ServingConfig(), namespace="ns",
                                               replicas=1, storage=STORAGE, scheduler_address="s:8034")
    names = [e["name"] for e in manifest["spec"]["template"]["spec"]["containers"][1]["env"]]
    fields = set(PullerSettings.model_fields)
    assert [n for n in names if n.startswith("MESHSERVE_PULLER_") and n.removeprefix("MESHSERVE_PULLER_").lower() not in fields] == []


def _example_runtime(path: str) -> rts.Runtime:
    return rts.parse_runtime(yaml.safe_load((Path(__file__).parents[4] / path).read_text()), cluster_scoped=False)


def test_a_custom_spi_runtime_gets_a_puller_on_8086_that_calls_its_spi() -> None:
    """examples/custom/spi-runtime: no builtInAdapter, grpcEndpoint port:8085 (upstream's
    custom-runtime convention): the puller moves to 8086, calls the SPI there, and stays the
    pod's agent with storageHelper.disabled (then downloading nothing)."""
    runtime = _example_runtime("examples/custom/spi-runtime/servingruntime.yaml")
    for disabled in (False, True):
        manifest = deploy.build_runtime_deployment(
            runtime=replace(runtime, storage_helper_disabled=disabled), config=ServingConfig(), namespace="ns",
            replicas=1, storage=STORAGE, scheduler_address="s:8034",
        )
        kubernetes_validate.validate(manifest, "1.32", strict=True)
        template = manifest["spec"]["template"]
        containers = {c["name"]: c for c in template["spec"]["containers"]}
        assert set(containers) == {"linear-json-runtime", "puller"}
        puller = containers["puller"]
        env = {e["name"]: e.get("value") for e in puller["env"]}
        assert env["MESHSERVE_PULLER_MODEL_SERVER_KIND"] == "spi"
        assert env["MESHSERVE_PULLER_MODEL_SERVER_ENDPOINT"] == "port:8085"
        assert env["MESHSERVE_PULLER_LISTEN_ADDRESS"] == "0.0.0.0:8086"
        assert puller["ports"] == [{"name": "mgmt", "containerPort": 8086}, {"name": "health", "containerPort": 8089}, {"name": "prometheus", "containerPort": 2112}]
        assert env.get("MESHSERVE_PULLER_STORAGE_HELPER_DISABLED") == ("true" if disabled else None)
        assert deploy.LOCAL_COMMAND_ANNOTATION in template["metadata"]["annotations"]


def test_the_ovms_runtime_points_the_puller_at_ovms_config_and_rest() -> None:
    manifest = deploy.build_runtime_deployment(
        runtime=_example_runtime("examples/isvc/ovms-1.x-servingruntime.yaml"), config=ServingConfig(), namespace="ns",
        replicas=1, storage=STORAGE, scheduler_address="s:8034",
    )
    kubernetes_validate.validate(manifest, "1.32", strict=True)
    containers = {c["name"]: c for c in manifest["spec"]["template"]["spec"]["containers"]}
    env = {e["name"]: e.get("value") for e in containers["puller"]["env"]}
    assert env["MESHSERVE_PULLER_MODEL_SERVER_KIND"] == "ovms"
    assert env["MESHSERVE_PULLER_MODEL_SERVER_REST"] == "http://127.0.0.1:8888"
    assert env["MESHSERVE_PULLER_OVMS_CONFIG_PATH"] == "/models/model_config_list.json"
    assert env["MESHSERVE_PULLER_LISTEN_ADDRESS"] == "0.0.0.0:8085"
    assert "--config_path=/models/model_config_list.json" in containers["ovms"]["args"]


@pytest.mark.parametrize(("q", "n"), [("1Gi", 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), ("100", 100), (5, 5), ("500m", 0)])
def test_parse_quantity(q: Any, n: int) -> None:
    assert deploy.parse_quantity(q) == n


def test_plan_predictor() -> None:
    assert rc.plan_predictor(None, runtimes=RUNTIMES, config=CONFIG).op is rc.PredictorOp.DELETE_VMODEL
    assert rc.plan_predictor(sklearn(deleting=True), runtimes=RUNTIMES, config=CONFIG).op is rc.PredictorOp.DELETE_VMODEL
    ok = rc.plan_predictor(sklearn(), runtimes=RUNTIMES, config=CONFIG)
    assert ok.op is rc.PredictorOp.SET_VMODEL and ok.runtimes == ("mlserver-1.x",)
    assert rc.plan_predictor(sklearn(), runtimes={}, config=CONFIG).failure is rts.SelectionFailure.NO_SUPPORTING_RUNTIME
    bad = specs.parse_predictor({"metadata": {"name": "p"}, "spec": {"modelType": {"name": "x"}, "path": "a", "storage": {"path": "b"}}})
    assert rc.plan_predictor(bad, runtimes=RUNTIMES, config=CONFIG).op is rc.PredictorOp.READ_STATUS


events = st.lists(st.tuples(st.booleans(), st.floats(min_value=0, max_value=20)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(events)
def test_runtime_plan_invariants(steps: list[tuple[bool, float]]) -> None:
    observed: dict[str, rc.ObservedDeployment] = {}
    records: dict[str, rc.RuntimeRecord] = {}
    now = 0.0
    unused_since: float | None = None
    for used, dt in steps:
        now += dt
        result = plan([sklearn()] if used else [], observed, records, now=now)
        kinds: dict[str, set[rc.ActionKind]] = {}
        for a in result.actions:
            kinds.setdefault(a.name, set()).add(a.kind)
            assert a.name in observed or a.kind is rc.ActionKind.CREATE
        assert all(len(k) == 1 for k in kinds.values())
        if result.requeue_after is not None:
            assert 0 < result.requeue_after <= CONFIG.scale_to_zero_grace_period_seconds
        observed = apply(result, observed)
        records = dict(result.records)
        if used:
            assert replicas(observed) == CONFIG.pods_per_runtime   # in use: never below podsPerRuntime
            unused_since = None
        elif ML in observed and replicas(observed):
            unused_since = now if unused_since is None else unused_since
            assert now - unused_since < CONFIG.scale_to_zero_grace_period_seconds + 1e-9


def test_the_triton_prestart_annotation_reaches_the_puller() -> None:
    """meshserve.io/prestart-formats on a Triton runtime: the puller imports those formats'
    frameworks at pod start; `all` means the runtime's auto-selected formats; unset, none."""
    base = RUNTIMES["triton-2.x"]

    def puller_env(annotations: dict[str, str]) -> dict[str, str | None]:
        runtime = replace(base, annotations=tuple(annotations.items()))
        manifest = deploy.build_runtime_deployment(runtime=runtime, config=ServingConfig(), namespace="ns",
                                                   replicas=1, storage=STORAGE, scheduler_address="s:8034")
        containers = {c["name"]: c for c in manifest["spec"]["template"]["spec"]["containers"]}
        return {e["name"]: e.get("value") for e in containers["puller"]["env"]}

    var = "MESHSERVE_PULLER_TRITON_PRESTART_FORMATS"
    assert var not in puller_env({})
    assert puller_env({deploy.PRESTART_ANNOTATION: "onnx,tensorflow"})[var] == "onnx,tensorflow"
    everything = puller_env({deploy.PRESTART_ANNOTATION: "all"})[var]
    assert everything is not None
    assert set(everything.split(",")) == {f.name for f in base.formats if f.auto_select}
    assert len(everything.split(",")) == len(set(everything.split(",")))  # tensorflow:1 and :2 once


# --- what a runtime pod needs on a real cluster ---------------------------------------------------

RUNTIME_CASES = [
    pytest.param("mlserver-1.x", 8001, 8002, id="mlserver"),
    pytest.param("triton-2.x", 8001, 8000, id="triton"),
    pytest.param("ovms-1.x", 8001, 8888, id="ovms"),
]
# the command line each model server runs with in its container (docker/Dockerfile's CMD for
# MLServer, the ServingRuntimes' command for Triton and OVMS), and ones that must not match
SERVER_CMDLINES = {
    "mlserver-1.x": "/usr/local/bin/python /usr/local/bin/mlserver start /models",
    "triton-2.x": "tritonserver --model-repository=/models/_triton_models --model-control-mode=explicit",
    "ovms-1.x": "/ovms/bin/ovms --port=8001 --rest_port=8888 --config_path=/models/model_config_list.json",
}
OTHER_CMDLINES = [
    "python -m meshserve.puller",
    "/bin/sh -c mkdir -p /models/_triton_models; chmod 777 /models/_triton_models; exec tritonserver --model-repository=/x",
    "/pause",
]


def runtime_pod(runtime: rts.Runtime, config: ServingConfig | None = None) -> dict[str, Any]:
    manifest = deploy.build_runtime_deployment(runtime=runtime, config=config or ServingConfig(), namespace="ns",
                                               replicas=2, storage=STORAGE, scheduler_address="meshserve-scheduler:8034")
    kubernetes_validate.validate(manifest, "1.32", strict=True)
    return manifest


def puller_env(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    containers = {c["name"]: c for c in manifest["spec"]["template"]["spec"]["containers"]}
    return list(containers["puller"]["env"])


@pytest.mark.parametrize(("name", "data_port", "rest_port"), RUNTIME_CASES)
def test_runtime_pod_env_and_ports(name: str, data_port: int, rest_port: int) -> None:
    import re

    manifest = runtime_pod(RUNTIMES[name])
    template = manifest["spec"]["template"]
    containers = {c["name"]: c for c in template["spec"]["containers"]}
    server = template["spec"]["containers"][0]
    env_list = puller_env(manifest)
    env = {e["name"]: e.get("value") for e in env_list}
    names = [e["name"] for e in env_list]
    # the downward API: the pod's own name and IP, defined before anything refers to $(POD_IP)
    by_name = {e["name"]: e for e in env_list}
    assert by_name["MESHSERVE_PULLER_POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert by_name["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    first_use = min(i for i, e in enumerate(env_list) if "$(POD_IP)" in str(e.get("value", "")))
    assert names.index("POD_IP") < first_use
    assert env["MESHSERVE_PULLER_LISTEN_ADDRESS"] == "0.0.0.0:8085"
    assert env["MESHSERVE_PULLER_ADVERTISE_ADDRESS"] == "$(POD_IP):8085"
    assert env["MESHSERVE_PULLER_MODEL_SERVER_GRPC"] == f"127.0.0.1:{data_port}"
    assert env["MESHSERVE_PULLER_MODEL_SERVER_ADVERTISE_GRPC"] == f"$(POD_IP):{data_port}"
    assert env["MESHSERVE_PULLER_MODEL_SERVER_REST"] == f"http://127.0.0.1:{rest_port}"
    assert env["MESHSERVE_PULLER_MODEL_SERVER_ADVERTISE_REST"] == f"http://$(POD_IP):{rest_port}"
    assert env["MESHSERVE_PULLER_SCHEDULER_ADDRESS"] == "meshserve-scheduler:8034"
    assert env["MESHSERVE_PULLER_MODEL_SERVER_KIND"] == RUNTIMES[name].built_in_adapter.server_type  # type: ignore[union-attr]
    assert all(not v or "127.0.0.1" not in v for k, v in env.items() if "ADVERTISE" in k)
    # the model server's ports are declared on its container, the puller's on the puller
    assert {data_port, rest_port} <= {p["containerPort"] for p in server.get("ports", [])}
    assert {"name": "mgmt", "containerPort": 8085} in containers["puller"]["ports"]
    # metrics are served where the pod is annotated
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/scheme"] == env["MESHSERVE_PULLER_METRICS_SCHEME"] == "https"  # metrics.scheme default
    assert env["MESHSERVE_PULLER_METRICS_PORT"] == annotations["prometheus.io/port"] == "2112"
    assert {"name": "prometheus", "containerPort": 2112} in containers["puller"]["ports"]
    # the puller finds the model server's process in the shared process namespace
    assert template["spec"]["shareProcessNamespace"] is True
    pattern = re.compile(env["MESHSERVE_PULLER_MODEL_SERVER_PROCESS"])
    assert pattern.search(SERVER_CMDLINES[name])
    assert not any(pattern.search(other) for other in OTHER_CMDLINES)


def test_the_mlserver_rest_port_follows_its_env() -> None:
    base = RUNTIMES["mlserver-1.x"]
    spec = yaml.safe_load(yaml.safe_dump(base.spec))
    for var in spec["containers"][0]["env"]:
        if var["name"] == "MLSERVER_HTTP_PORT":
            var["value"] = "9002"
    env = {e["name"]: e.get("value") for e in puller_env(runtime_pod(replace(base, spec=spec)))}
    assert env["MESHSERVE_PULLER_MODEL_SERVER_ADVERTISE_REST"] == "http://$(POD_IP):9002"


def test_metrics_follow_the_serving_config() -> None:
    manifest = runtime_pod(RUNTIMES["mlserver-1.x"], parse_config_yaml("metrics:\n  port: 9091\n").config)
    env = {e["name"]: e.get("value") for e in puller_env(manifest)}
    assert env["MESHSERVE_PULLER_METRICS_PORT"] == manifest["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9091"
    off = runtime_pod(RUNTIMES["mlserver-1.x"], parse_config_yaml("metrics:\n  enabled: false\n").config)
    assert "MESHSERVE_PULLER_METRICS_PORT" not in {e["name"] for e in puller_env(off)}
    assert not any(k.startswith("prometheus.io/") for k in off["spec"]["template"]["metadata"]["annotations"])
    puller = next(c for c in off["spec"]["template"]["spec"]["containers"] if c["name"] == "puller")
    assert [p["name"] for p in puller["ports"]] == ["mgmt", "health"]


@pytest.mark.parametrize("name", ["mlserver-1.x", "triton-2.x", "ovms-1.x", "spi"])
def test_runtime_pod_is_hardened_probed_and_spread(name: str) -> None:
    runtime = _example_runtime("examples/custom/spi-runtime/servingruntime.yaml") if name == "spi" else RUNTIMES[name]
    manifest = runtime_pod(runtime)
    pod = manifest["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == deploy.RUNTIME_POD_UID
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        # every place written to is an emptyDir: the models and /tmp
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/models"]] and "emptyDir" in volumes[mounts["/tmp"]], c["name"]
        assert c.get("readinessProbe") or c["name"] != "puller"
        assert c.get("livenessProbe"), c["name"]
        assert c["resources"]["limits"].get("memory") or c["name"] != "puller", c["name"]
    containers = {c["name"]: c for c in pod["containers"]}
    # the puller's probes are its /readyz and /healthz, on the port its health server listens on
    puller = containers["puller"]
    assert puller["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert puller["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    health_port = next(p["containerPort"] for p in puller["ports"] if p["name"] == "health")
    assert {e["name"]: e.get("value") for e in puller["env"]}["MESHSERVE_PULLER_HEALTH_PORT"] == str(health_port)
    assert health_port not in {p["containerPort"] for c in pod["containers"] for p in c.get("ports", []) if p["name"] != "health"}
    assert containers["puller"]["startupProbe"]["failureThreshold"] * containers["puller"]["startupProbe"]["periodSeconds"] >= 120
    server = pod["containers"][0]
    assert server.get("readinessProbe") or server.get("startupProbe")
    # graceful stop: the server keeps serving while the puller says goodbye, within the grace period
    stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < stop < pod["terminationGracePeriodSeconds"]
    # runtime pods spread over nodes, preferably (never unschedulable for it)
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == manifest["spec"]["selector"]["matchLabels"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["nodeAffinity"]


def test_what_a_serving_runtime_sets_itself_wins() -> None:
    base = RUNTIMES["mlserver-1.x"]
    spec = yaml.safe_load(yaml.safe_dump(base.spec))
    server = spec["containers"][0]
    server["securityContext"] = {"runAsUser": 2000, "readOnlyRootFilesystem": False}
    server["readinessProbe"] = {"httpGet": {"path": "/v2/health/ready", "port": 8002}}
    pod = runtime_pod(replace(base, spec=spec))["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert containers["mlserver"]["securityContext"]["readOnlyRootFilesystem"] is False
    assert containers["mlserver"]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert containers["mlserver"]["readinessProbe"] == {"httpGet": {"path": "/v2/health/ready", "port": 8002}}
    # the puller reads the server's /proc entries: it runs with the server's uid
    assert containers["puller"]["securityContext"]["runAsUser"] == 2000


def test_the_custom_runtime_process_pattern_comes_from_its_command() -> None:
    import re

    manifest = runtime_pod(_example_runtime("examples/custom/spi-runtime/servingruntime.yaml"))
    env = {e["name"]: e.get("value") for e in puller_env(manifest)}
    pattern = re.compile(env["MESHSERVE_PULLER_MODEL_SERVER_PROCESS"])
    assert pattern.search("python /opt/app/runtime.py --grpc-endpoint port:8085")
    assert not pattern.search("python -m meshserve.puller")


# --- HorizontalPodAutoscalers (plan_runtimes with hpa, Kubernetes mode) ----------------------------

HPA_ANNOTATIONS = {hpa.AUTOSCALER_CLASS_ANNOTATION: "hpa", hpa.MIN_SCALE_ANNOTATION: "2", hpa.MAX_SCALE_ANNOTATION: "5"}
ML_RUNTIME = "mlserver-1.x"


def hpa_plan(observed: dict[str, rc.ObservedDeployment], annotations: dict[str, str], *,
             records: dict[str, rc.RuntimeRecord] | None = None, in_use: bool = True,
             meta: dict[str, tuple[str, dict[str, str]]] | None = None, now: float = 0, with_hpa: bool = True) -> rc.RuntimePlan:
    runtimes = dict(RUNTIMES)
    runtimes[ML_RUNTIME] = replace(RUNTIMES[ML_RUNTIME], annotations=tuple(sorted(annotations.items())))
    return rc.plan_runtimes(
        runtimes=runtimes, predictors=[sklearn()] if in_use else [], observed=observed, records=records or {},
        config=CONFIG, namespace="ns", storage=STORAGE, scheduler_address="meshserve-scheduler:8034", now=now,
        hpa=with_hpa, runtime_meta=meta,
    )


def ml_hpa(result: rc.RuntimePlan) -> rc.HpaPlan:
    return next(p for p in result.hpas if p.runtime == ML_RUNTIME)


def ml_actions(result: rc.RuntimePlan) -> list[rc.DeploymentAction]:
    return [a for a in result.actions if a.name == ML]


def test_hpa_new_deployment_starts_at_min_scale_and_the_hpa_is_owned_by_the_runtime() -> None:
    result = hpa_plan({}, HPA_ANNOTATIONS, meta={ML_RUNTIME: ("uid-1", {"team": "a"})})
    (create,) = ml_actions(result)
    assert create.kind is rc.ActionKind.CREATE and create.replicas == 2
    p = ml_hpa(result)
    assert p.wanted and p.name == ML and not p.error and p.desired is not None
    assert (p.desired["spec"]["minReplicas"], p.desired["spec"]["maxReplicas"]) == (2, 5)
    assert p.desired["spec"]["scaleTargetRef"]["name"] == ML
    assert p.desired["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert p.desired["metadata"]["labels"]["team"] == "a"


def test_hpa_decision_is_never_scaled_back_and_comes_back_to_planned_without_it() -> None:
    first = hpa_plan({}, HPA_ANNOTATIONS)
    observed = apply(first, {})
    observed[ML] = replace(observed[ML], replicas=4)   # what the HPA decided
    assert ml_actions(hpa_plan(observed, HPA_ANNOTATIONS, records=dict(first.records), now=1)) == []
    plain = hpa_plan(observed, {}, records=dict(first.records), now=1)
    (scale,) = ml_actions(plain)
    assert scale.kind is rc.ActionKind.SCALE and scale.replicas == CONFIG.pods_per_runtime
    p = ml_hpa(plain)
    assert not p.wanted and p.desired is None and not p.error   # an HPA left from before is deleted


def test_hpa_spec_hash_ignores_replicas_so_a_held_count_is_no_patch() -> None:
    first = hpa_plan({}, HPA_ANNOTATIONS)
    observed = apply(first, {})
    (create,) = ml_actions(first)
    again = hpa_plan({ML: replace(observed[ML], replicas=5)}, HPA_ANNOTATIONS, records=dict(first.records), now=1)
    assert ml_actions(again) == []
    assert create.manifest is not None
    assert deploy.spec_hash(dict(create.manifest)) == observed[ML].spec_hash


def test_hpa_scale_to_zero_writes_zero_and_drops_the_hpa() -> None:
    first = hpa_plan({}, HPA_ANNOTATIONS)
    observed = apply(first, {})
    unused = hpa_plan(observed, HPA_ANNOTATIONS, records=dict(first.records), in_use=False, now=1)   # grace starts
    assert ml_hpa(unused).wanted
    later = hpa_plan(observed, HPA_ANNOTATIONS, records=dict(unused.records), in_use=False, now=1000)
    (scale,) = ml_actions(later)
    assert scale.replicas == 0
    assert not ml_hpa(later).wanted


def test_hpa_invalid_annotation_is_an_error_and_holds_the_running_replicas() -> None:
    bad = {**HPA_ANNOTATIONS, hpa.TARGET_UTILIZATION_ANNOTATION: "150"}
    first = hpa_plan({}, HPA_ANNOTATIONS)
    observed = apply(first, {})
    observed[ML] = replace(observed[ML], replicas=4)
    result = hpa_plan(observed, bad, records=dict(first.records), now=1)
    p = ml_hpa(result)
    assert hpa.TARGET_UTILIZATION_ANNOTATION in p.error and not p.wanted and p.desired is None
    assert ml_actions(result) == []
    (create,) = ml_actions(hpa_plan({}, bad))   # a new Deployment: the planned replicas
    assert create.replicas == CONFIG.pods_per_runtime


def test_hpa_off_plans_no_hpas_and_the_annotations_change_nothing() -> None:
    result = hpa_plan({}, HPA_ANNOTATIONS, with_hpa=False)
    assert result.hpas == ()
    (create,) = ml_actions(result)
    assert create.replicas == CONFIG.pods_per_runtime


def test_hpa_unmanaged_deployment_gets_no_hpa_plan() -> None:
    result = hpa_plan({ML: rc.ObservedDeployment(ML, 1, "x", managed=False)}, HPA_ANNOTATIONS)
    assert all(p.runtime != ML_RUNTIME for p in result.hpas)
