"""The kustomize base and overlays build offline and every object in them is valid.

Built-in kinds are checked with kubernetes-validate in strict mode (unknown fields rejected);
custom resources (ClusterServingRuntimes, the examples) against the CRDs' openAPIV3Schema with
`meshserve.controller.crdschema`. Cross-object checks catch what schemas cannot: selectors that
match no pod, references to missing ServiceAccounts/Secrets, ports that differ from the design.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from meshserve.controller import crdschema
from meshserve.controller.router_deployment import (
    build_router_deployment,
    build_router_pdb,
    build_router_service,
)
from meshserve.controller.serving_config import parse_configmap_data

REPO = Path(__file__).resolve().parents[4]
KUSTOMIZE = REPO / "deploy" / "kustomize"
BASE = KUSTOMIZE / "base"
OVERLAYS = sorted(p for p in (KUSTOMIZE / "overlays").iterdir() if (p / "kustomization.yaml").exists())
EXAMPLES = REPO / "examples" / "isvc"
K8S_VERSION = "1.32"
KUBECTL = shutil.which("kubectl")

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not on PATH: `kubectl kustomize` is needed to build the manifests"
)


def build(path: Path) -> list[dict[str, Any]]:
    return [copy.deepcopy(d) for d in _build(path)]


@functools.cache
def _build(path: Path) -> tuple[dict[str, Any], ...]:
    """The rendered kustomization plus the router the controller makes from it (`controller_routers`)."""
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return tuple(docs + controller_routers(docs))


def controller_routers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The router Deployment, Service and PodDisruptionBudget the controller makes at start in
    its own namespace (`router_deployment.py`, from the rendered model-serving-config and the
    controller's env; the budget's owner uid is the Deployment's, known once it is created)."""
    controller = next((d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "meshserve-controller"), None)
    cm = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "model-serving-config"), None)
    if controller is None or cm is None:
        return []
    env = {e["name"]: e.get("value", "") for e in controller["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    config = parse_configmap_data(cm["data"]).config
    namespace = controller["metadata"]["namespace"]
    return [
        build_router_deployment(config, namespace=namespace, image=env["MESHSERVE_CONTROLLER_ROUTER_IMAGE"],
                                replicas=int(env.get("MESHSERVE_CONTROLLER_ROUTER_REPLICAS", "2")),
                                scheduler_address=env["MESHSERVE_CONTROLLER_SCHEDULER_ADDRESS"],
                                cluster_scope=env.get("MESHSERVE_CONTROLLER_NAMESPACE_SCOPE", "true") == "false"),
        build_router_service(config, namespace=namespace),
        build_router_pdb(config, namespace=namespace, owner_uid="uid-of-the-router-deployment"),
    ]


def crds_from(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {crdschema.crd_key(d): d for d in docs if d["kind"] == "CustomResourceDefinition"}


def by_kind(docs: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] == kind)


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def validate_all(docs: list[dict[str, Any]]) -> list[str]:
    crds = crds_from(docs)
    problems: list[str] = []
    for doc in docs:
        ref = f"{doc['kind']}/{doc['metadata']['name']}"
        group = doc["apiVersion"].rpartition("/")[0]
        if (group, doc["kind"]) in crds:
            problems += [f"{ref}: {e}" for e in crdschema.validate_custom_resource(doc, crds[(group, doc["kind"])])]
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{ref}: {err.message} at {list(err.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{ref}: no schema for {doc['apiVersion']} {doc['kind']}")
    return problems


TARGETS = [pytest.param(BASE, id="base")] + [pytest.param(p, id=p.name) for p in OVERLAYS]


def test_there_is_an_overlay() -> None:
    assert any(p.name == "quickstart" for p in OVERLAYS)


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_valid(target: Path) -> None:
    docs = build(target)
    assert validate_all(docs) == []


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_cross_object_references(target: Path) -> None:
    docs = build(target)
    cluster_kinds = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime", "Namespace"}
    for doc in docs:
        ns = doc["metadata"].get("namespace")
        if doc["kind"] in cluster_kinds:
            assert ns is None, f"{doc['kind']}/{doc['metadata']['name']} is cluster-scoped but has namespace {ns}"
        else:
            assert ns, f"{doc['kind']}/{doc['metadata']['name']} has no namespace"
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in by_kind(docs, "ServiceAccount")}
    secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in by_kind(docs, "Secret")}
    deployments = list(by_kind(docs, "Deployment"))
    for dep in deployments:
        ns = dep["metadata"]["namespace"]
        template_labels = dep["spec"]["template"]["metadata"]["labels"]
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template_labels.items(), dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        if "serviceAccountName" in pod:
            assert (ns, pod["serviceAccountName"]) in accounts, dep["metadata"]["name"]
        if secrets:  # base leaves Secrets to the user; overlays that ship them must be complete
            for container in pod["containers"]:
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref and not ref.get("optional"):
                        assert (ns, ref["name"]) in secrets, f"{dep['metadata']['name']}: Secret {ref['name']}"
    for svc in by_kind(docs, "Service"):
        sel = svc["spec"]["selector"]
        targets = [d for d in deployments if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                   and d["metadata"]["namespace"] == svc["metadata"]["namespace"]]
        assert targets, f"Service {svc['metadata']['name']} selects no Deployment"
        port_names = {p["name"] for d in targets for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{svc['metadata']['name']}: {port['targetPort']}"
    binding = find(docs, "ClusterRoleBinding", "meshserve-controller")
    subject = binding["subjects"][0]
    assert (subject["namespace"], subject["name"]) in accounts


def _ports(docs: list[dict[str, Any]], service: str) -> dict[str, int]:
    return {p["name"]: p["port"] for p in find(docs, "Service", service)["spec"]["ports"]}


@needs_kubectl
def test_env_names_exist_in_the_settings_classes() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_compose_checks", Path(__file__).with_name("test_compose.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    unknown_settings_env = module.unknown_settings_env

    docs = build(BASE)
    problems = []
    for dep in by_kind(docs, "Deployment"):
        for container in dep["spec"]["template"]["spec"]["containers"]:
            names = [e["name"] for e in container.get("env", [])]
            problems += [f"{dep['metadata']['name']}: {p}" for p in unknown_settings_env(names)]
    assert problems == []


@needs_kubectl
def test_ports_match_the_design() -> None:
    docs = build(BASE)
    assert _ports(docs, "modelmesh-serving") == {"grpc": 8033, "http": 8008, "prometheus": 2112}
    assert _ports(docs, "meshserve-scheduler") == {"grpc": 8034, "http": 8080, "prometheus": 2112}
    assert _ports(docs, "meshserve-controller") == {"prometheus": 2112, "health": 8081}
    # headless like upstream's default (headlessService: true)
    assert find(docs, "Service", "modelmesh-serving")["spec"]["clusterIP"] == "None"


@needs_kubectl
def test_controller_rbac_covers_what_it_does() -> None:
    docs = build(BASE)
    rules = find(docs, "ClusterRole", "meshserve-controller")["rules"]

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)

    for res in ("inferenceservices", "predictors", "servingruntimes", "clusterservingruntimes"):
        for verb in ("get", "list", "watch"):
            assert allowed("serving.kserve.io", res, verb)
        assert allowed("serving.kserve.io", f"{res}/status", "patch")
    for verb in ("list", "watch", "create", "patch", "delete"):
        assert allowed("apps", "deployments", verb)
    for res in ("secrets", "configmaps"):
        assert allowed("", res, "watch")
        assert not allowed("", res, "create"), "the controller only reads Secrets/ConfigMaps"
    assert allowed("", "events", "create")


@needs_kubectl
def test_default_runtimes_and_config() -> None:
    docs = build(BASE)
    names = {d["metadata"]["name"] for d in by_kind(docs, "ClusterServingRuntime")}
    assert names == {"mlserver-1.x", "triton-2.x", "ovms-1.x"}
    mlserver = find(docs, "ClusterServingRuntime", "mlserver-1.x")["spec"]
    assert mlserver["multiModel"] is True
    assert {(f["name"], f["version"], f["autoSelect"]) for f in mlserver["supportedModelFormats"]} == {
        ("sklearn", "0", True), ("xgboost", "1", True), ("lightgbm", "3", True)}
    assert mlserver["protocolVersions"] == ["grpc-v2"]
    assert mlserver["builtInAdapter"]["serverType"] == "mlserver"
    cm = find(docs, "ConfigMap", "model-serving-config")
    assert list(cm["data"]) == ["config.yaml"]
    assert isinstance(yaml.safe_load(cm["data"]["config.yaml"]), dict)


@needs_kubectl
def test_changing_the_namespace_keeps_cluster_objects_cluster_scoped(tmp_path: Path) -> None:
    overlay = tmp_path / "ns"
    overlay.mkdir()
    rel = Path("..") / Path(*([".."] * (len(overlay.parts) - 1))) / BASE.relative_to("/")
    # the form documented in base/kustomization.yaml (a plain `namespace:` would leave the
    # ClusterRoleBinding's subject in the old namespace)
    (overlay / "kustomization.yaml").write_text(
        f"resources:\n  - {rel.as_posix()}\n"
        "transformers:\n  - |-\n    apiVersion: builtin\n    kind: NamespaceTransformer\n"
        "    metadata:\n      name: set-namespace\n      namespace: other-ns\n"
        "    setRoleBindingSubjects: allServiceAccounts\n"
    )
    docs = build(overlay)
    assert all(d["metadata"].get("namespace") is None for d in by_kind(docs, "ClusterServingRuntime"))
    assert find(docs, "ClusterRoleBinding", "meshserve-controller")["subjects"][0]["namespace"] == "other-ns"
    assert find(docs, "Deployment", "meshserve-controller")["metadata"]["namespace"] == "other-ns"


def _base_crds() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted((BASE / "crd").glob("*.yaml"))]
    return crds_from(docs)


EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLE_FILES}
    assert {"example-mlserver-sklearn-mnist-isvc.yaml", "new-format-mm.yaml", "old-format-mm.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_example_crs_match_the_crds(path: Path) -> None:
    crds = _base_crds()
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] == "ConfigMap":
            continue   # model-serving-config for local mode: checked by `meshserve apply`, not a CR
        key = (doc["apiVersion"].rpartition("/")[0], doc["kind"])
        assert key in crds, f"{path.name}: no CRD for {key}"
        assert crdschema.validate_custom_resource(doc, crds[key]) == []


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        pytest.param(lambda d: d["spec"]["predictor"]["model"].update(modelFormat={"nmae": "x"}), "name", id="typo"),
        pytest.param(lambda d: d["spec"].pop("predictor"), "predictor", id="missing-predictor"),
        pytest.param(lambda d: d["spec"]["predictor"]["model"].update(storage={"key": 3}), "key", id="wrong-type"),
    ],
)
def test_crd_validation_rejects_bad_isvcs(mutate: Any, expect: str) -> None:
    doc = yaml.safe_load((EXAMPLES / "example-mlserver-sklearn-mnist-isvc.yaml").read_text())
    mutate(doc)
    errors = crdschema.validate_custom_resource(doc, _base_crds()[("serving.kserve.io", "InferenceService")])
    assert errors and any(expect in e for e in errors)


def test_crd_validation_rejects_bad_status_and_runtime() -> None:
    crds = _base_crds()
    pred = yaml.safe_load((EXAMPLES / "example-sklearn-mnist-predictor.yaml").read_text())
    pred["status"] = {"activeModelState": "Bogus", "available": False, "failedCopies": 0,
                      "targetModelState": "", "transitionStatus": "UpToDate"}
    assert any("activeModelState" in e for e in crdschema.validate_custom_resource(pred, crds[("serving.kserve.io", "Predictor")]))
    csr = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ClusterServingRuntime",
           "metadata": {"name": "x", "namespace": "oops"},
           "spec": {"containers": [{"name": "c"}], "protocolVersions": ["grpc-v9"]}}
    errors = crdschema.validate_custom_resource(csr, crds[("serving.kserve.io", "ClusterServingRuntime")])
    assert any("cluster-scoped" in e for e in errors) and any("grpc-v9" in e for e in errors)


@needs_kubectl
def test_router_and_scheduler_have_disruption_budgets_that_let_a_drain_through() -> None:
    docs = build(BASE)
    budgets = list(by_kind(docs, "PodDisruptionBudget"))
    for name in ("modelmesh-serving", "meshserve-scheduler"):
        dep = find(docs, "Deployment", name)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, name
        spec = matching[0]["spec"]
        replicas = dep["spec"]["replicas"]
        # at least one pod may be evicted (else a node drain blocks), and never every router at once
        allowed = spec["maxUnavailable"] if "maxUnavailable" in spec else replicas - spec["minAvailable"]
        assert allowed >= 1, name
        if name == "modelmesh-serving":
            assert replicas - allowed >= 1
            (owner,) = matching[0]["metadata"]["ownerReferences"]   # garbage-collected with the router
            assert (owner["kind"], owner["name"], owner["controller"]) == ("Deployment", name, True)


@needs_kubectl
def test_every_deployment_is_hardened_probed_and_served_as_annotated() -> None:
    docs = build(BASE)
    for dep in by_kind(docs, "Deployment"):
        ref = dep["metadata"]["name"]
        template = dep["spec"]["template"]
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, ref
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, ref
        assert pod.get("terminationGracePeriodSeconds", 30) >= 30, ref
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, ref
            assert sc["capabilities"] == {"drop": ["ALL"]}, ref
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{ref}: /tmp must be writable"
            assert c.get("readinessProbe") and c.get("livenessProbe"), ref
            assert {"requests", "limits"} <= set(c["resources"]), ref
        annotations = template["metadata"].get("annotations") or {}
        if annotations.get("prometheus.io/scrape") == "true":
            port = int(annotations["prometheus.io/port"])
            served = {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
            metrics_env = {e.get("value") for c in pod["containers"] for e in c.get("env", []) if e["name"].endswith("_METRICS_PORT")}
            assert port in served and str(port) in metrics_env, ref
