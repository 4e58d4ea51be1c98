"""The Prometheus-operator component (deploy/kustomize/components/prometheus-operator) composed
with the base and with the quickstart overlay: it builds offline, its ServiceMonitors and
PodMonitor are well formed, and they scrape what the base and the controller really run.

monitoring.coreos.com/v1 kinds are not in kubernetes-validate's schemas, so their structure is
checked here (`monitor_problems`): the fields used, selectors, relabelings. Then the cross
checks (`scrape_problems`) simulate Prometheus' service discovery on the rendered objects and on
the runtime Deployments the controller's own `build_runtime_deployment` makes from the rendered
ClusterServingRuntimes and model-serving-config: each ServiceMonitor selects a Service by its
labels, its port exists by name on the Service, the pods behind it (after the relabelings'
keep/drop) are the ones meant; the PodMonitor selects every runtime pod and no other, on a
container port of that name at `metrics.port`, with the scheme the pod serves.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from meshserve.controller import crdschema
from meshserve.controller.deployments import build_runtime_deployment
from meshserve.controller.router_deployment import build_router_deployment, build_router_service
from meshserve.controller.runtimes import parse_runtime
from meshserve.controller.serving_config import ServingConfig, parse_configmap_data
from meshserve.controller.storage_config import parse_storage_secret

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "deploy" / "kustomize"
COMPONENT = KUSTOMIZE / "components" / "prometheus-operator"
KUBECTL = shutil.which("kubectl")
MONITORING = "monitoring.coreos.com/v1"

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not on PATH: `kubectl kustomize` is needed to build the manifests"
)

# The fields of prometheus-operator's v1 API that a monitor here may use (a subset of the CRDs).
SPEC_FIELDS = {
    "ServiceMonitor": {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                       "podTargetLabels", "sampleLimit", "attachMetadata"},
    "PodMonitor": {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels",
                   "sampleLimit", "attachMetadata"},
}
ENDPOINTS_KEY = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}
ENDPOINT_FIELDS = {"port", "path", "scheme", "interval", "scrapeTimeout", "tlsConfig", "honorLabels",
                   "honorTimestamps", "relabelings", "metricRelabelings", "params", "followRedirects",
                   "enableHttp2", "authorization", "basicAuth", "bearerTokenSecret", "filterRunning"}
RELABEL_FIELDS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
                   "uppercase", "keepequal", "dropequal"}
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _rel(path: Path, start: Path) -> str:
    """kustomize wants relative paths."""
    return Path(*([".."] * (len(start.parts) - 1)), path.relative_to("/")).as_posix()


def build(overlay: Path) -> list[dict[str, Any]]:
    """The rendered overlay plus the router the controller makes from it (`controller_routers`)."""
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return docs + controller_routers(docs)


def controller_routers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The router Deployment and Service the controller makes at start in its own namespace
    (`router_deployment.py`, from the rendered model-serving-config and the controller's env)."""
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
    ]


def compose(tmp_path: Path, base: Path, *, config_patch: str | None = None) -> list[dict[str, Any]]:
    """An overlay of `base` + the component (as the component's comment tells users to write)."""
    overlay = tmp_path / "with-monitors"
    overlay.mkdir()
    text = f"resources:\n  - {_rel(base, overlay)}\ncomponents:\n  - {_rel(COMPONENT, overlay)}\n"
    if config_patch is not None:
        (overlay / "config.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: model-serving-config\n"
            "  namespace: modelmesh-serving\ndata:\n  config.yaml: |\n"
            + "".join(f"    {line}\n" for line in config_patch.splitlines())
        )
        text += "patches:\n  - path: config.yaml\n"
    (overlay / "kustomization.yaml").write_text(text)
    return build(overlay)


# --- structure ---------------------------------------------------------------------------------


def _selector_problems(ref: str, sel: Any) -> list[str]:
    if not isinstance(sel, Mapping) or not sel or set(sel) - {"matchLabels", "matchExpressions"}:
        return [f"{ref}: selector must have matchLabels and/or matchExpressions, got {sel!r}"]
    problems = []
    labels = sel.get("matchLabels", {})
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        problems.append(f"{ref}: matchLabels must map strings to strings")
    for expr in sel.get("matchExpressions", []):
        op = expr.get("operator")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist") or not isinstance(expr.get("key"), str):
            problems.append(f"{ref}: bad matchExpression {expr!r}")
        elif (op in ("In", "NotIn")) != bool(expr.get("values")):
            problems.append(f"{ref}: {op} {'needs' if op in ('In', 'NotIn') else 'takes no'} values")
    return problems


def monitor_problems(doc: dict[str, Any]) -> list[str]:
    """What is wrong with one ServiceMonitor/PodMonitor, field by field."""
    kind = doc.get("kind")
    ref = f"{kind}/{doc.get('metadata', {}).get('name')}"
    if doc.get("apiVersion") != MONITORING or kind not in SPEC_FIELDS:
        return [f"{ref}: not a {MONITORING} ServiceMonitor/PodMonitor"]
    problems = []
    meta = doc.get("metadata", {})
    if not meta.get("name") or not meta.get("namespace"):
        problems.append(f"{ref}: needs metadata.name and metadata.namespace")
    spec = doc.get("spec") or {}
    if unknown := set(spec) - SPEC_FIELDS[kind]:
        problems.append(f"{ref}: unknown spec field(s) {sorted(unknown)}")
    problems += _selector_problems(ref, spec.get("selector"))
    endpoints = spec.get(ENDPOINTS_KEY[kind])
    if not endpoints:
        problems.append(f"{ref}: no {ENDPOINTS_KEY[kind]}")
    for i, ep in enumerate(endpoints or []):
        where = f"{ref} {ENDPOINTS_KEY[kind]}[{i}]"
        if unknown := set(ep) - ENDPOINT_FIELDS:
            problems.append(f"{where}: unknown field(s) {sorted(unknown)}")
        if not isinstance(ep.get("port"), str):
            problems.append(f"{where}: needs a port name")
        if ep.get("scheme", "http") not in ("http", "https"):
            problems.append(f"{where}: scheme must be http or https")
        if not str(ep.get("path", "/metrics")).startswith("/"):
            problems.append(f"{where}: path must start with /")
        for r in ep.get("relabelings", []) + ep.get("metricRelabelings", []):
            action = r.get("action", "replace")
            if unknown := set(r) - RELABEL_FIELDS:
                problems.append(f"{where}: relabeling has unknown field(s) {sorted(unknown)}")
            if action.lower() not in RELABEL_ACTIONS:
                problems.append(f"{where}: unknown relabel action {action!r}")
            if not all(LABEL_NAME.fullmatch(s) for s in r.get("sourceLabels", [])):
                problems.append(f"{where}: bad sourceLabels {r.get('sourceLabels')}")
            if action.lower() in ("replace", "hashmod", "lowercase", "uppercase") and not r.get("targetLabel"):
                problems.append(f"{where}: a {action} relabeling needs a targetLabel")
            if "regex" in r:
                try:
                    re.compile(r["regex"])
                except re.error as err:
                    problems.append(f"{where}: bad regex {r['regex']!r}: {err}")
    return problems


# --- what they scrape --------------------------------------------------------------------------


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels) \
                or (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
    return True


def _meta_labels(pod_labels: Mapping[str, str]) -> dict[str, str]:
    """Prometheus' kubernetes_sd meta labels of a pod (the ones relabelings here read)."""
    return {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v for k, v in pod_labels.items()}


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' keep/drop/replace on a target's labels; None when the target is dropped."""
    out = dict(labels)
    for r in rules:
        value = r.get("separator", ";").join(out.get(s, "") for s in r.get("sourceLabels", []))
        regex = re.compile(r.get("regex", "(.*)"))
        match = regex.fullmatch(value)
        action = r.get("action", "replace").lower()
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            out[r["targetLabel"]] = match.expand(r.get("replacement", "$1").replace("$", "\\"))
    return out


def _pods(deployments: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in deployments:
        yield d["metadata"]["name"], d["spec"]["template"]


def _container_ports(template: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p}


def _has_certificate(template: dict[str, Any]) -> bool:
    """Whether the pod's metrics server (a runtime pod's puller, a router) is given a certificate
    (else, with https metrics, it makes one)."""
    names = {e["name"] for c in template["spec"]["containers"] if c["name"] in ("puller", "router") for e in c.get("env", [])}
    return bool(names & {"MESHSERVE_PULLER_TLS__CERT_FILE", "MESHSERVE_INTERNAL_TLS__CERT_FILE", "MESHSERVE_ROUTER_TLS__CERT_FILE"})


def runtime_deployments(docs: list[dict[str, Any]], config: ServingConfig) -> list[dict[str, Any]]:
    """The Deployments the controller makes for the rendered ClusterServingRuntimes."""
    namespace = next(d["metadata"]["namespace"] for d in docs if d["kind"] == "ConfigMap")
    return [
        build_runtime_deployment(
            runtime=parse_runtime(d, cluster_scoped=True), config=config, namespace=namespace, replicas=1,
            storage=parse_storage_secret(None), scheduler_address="meshserve-scheduler:8034",
        )
        for d in docs if d["kind"] == "ClusterServingRuntime"
    ]


def serving_config(docs: list[dict[str, Any]]) -> ServingConfig:
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "model-serving-config")
    return parse_configmap_data(cm["data"]).config


def scrape_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Who each monitor would scrape, against who should be scraped."""
    problems = []
    config = serving_config(docs)
    monitors = [d for d in docs if d["apiVersion"] == MONITORING]
    if monitors and config.metrics_disable_prometheus_operator_support:
        problems.append("metrics.disablePrometheusOperatorSupport is true: leave the prometheus-operator component out")
    if monitors and not config.metrics_enabled:
        problems.append("metrics.enabled is false: the runtime pods serve no metrics to monitor")
    base_deployments = [d for d in docs if d["kind"] == "Deployment"]
    runtimes = runtime_deployments(docs, config)
    every_pod = list(_pods(base_deployments + runtimes))
    scraped: dict[str, list[str]] = {}
    for mon in monitors:
        ref = f"{mon['kind']}/{mon['metadata']['name']}"
        ns = mon["metadata"]["namespace"]
        spec = mon["spec"]
        endpoints = spec[ENDPOINTS_KEY[mon["kind"]]]
        if mon["kind"] == "ServiceMonitor":
            services = [s for s in docs if s["kind"] == "Service" and s["metadata"]["namespace"] == ns
                        and selects(spec["selector"], s["metadata"].get("labels", {}))]
            if len(services) != 1:
                problems.append(f"{ref}: selects {len(services)} Services in {ns} (by their labels), not 1")
                continue
            svc = services[0]
            ports = {p["name"]: p for p in svc["spec"]["ports"]}
            for ep in endpoints:
                if ep["port"] not in ports:
                    problems.append(f"{ref}: Service {svc['metadata']['name']} has no port named {ep['port']!r}")
                    continue
                target_port = ports[ep["port"]]["targetPort"]
                behind = [(name, t) for name, t in every_pod
                          if selects({"matchLabels": svc["spec"]["selector"]}, t["metadata"]["labels"])
                          and (target_port in _container_ports(t) or target_port in _container_ports(t).values())]
                kept = [name for name, t in behind
                        if relabel(_meta_labels(t["metadata"]["labels"]), ep.get("relabelings", [])) is not None]
                scraped.setdefault(ref, []).extend(kept)
                for name, t in behind:
                    if name in kept:
                        scheme = t["metadata"].get("annotations", {}).get("prometheus.io/scheme", "http")
                        if ep.get("scheme", "http") != scheme:
                            problems.append(f"{ref}: scrapes {name} with {ep.get('scheme', 'http')}, it serves {scheme}")
                        if scheme == "https" and not _has_certificate(t) and not (ep.get("tlsConfig") or {}).get("insecureSkipVerify"):
                            problems.append(f"{ref}: scrapes {name} over https without tlsConfig.insecureSkipVerify, "
                                            "its certificate is self-signed")
        else:
            if spec.get("namespaceSelector") is None and any(d["metadata"]["namespace"] != ns for d in runtimes):
                problems.append(f"{ref}: runtime pods are in another namespace")
            for ep in endpoints:
                for name, t in every_pod:
                    if not selects(spec["selector"], t["metadata"]["labels"]):
                        continue
                    ports = _container_ports(t)
                    if ep["port"] not in ports:
                        problems.append(f"{ref}: pod of {name} has no container port named {ep['port']!r}")
                        continue
                    if ports[ep["port"]] != config.metrics_port:
                        problems.append(f"{ref}: {name}'s {ep['port']} port is {ports[ep['port']]}, metrics.port is {config.metrics_port}")
                    labels = relabel(_meta_labels(t["metadata"]["labels"]), ep.get("relabelings", []))
                    if labels is None:
                        continue
                    scraped.setdefault(ref, []).append(name)
                    scheme = t["metadata"].get("annotations", {}).get("prometheus.io/scheme", "http")
                    if ep.get("scheme", "http") != scheme:
                        problems.append(f"{ref}: scrapes {name} with {ep.get('scheme', 'http')}, it serves {scheme}")
                    if scheme == "https" and not _has_certificate(t) and not (ep.get("tlsConfig") or {}).get("insecureSkipVerify"):
                        problems.append(f"{ref}: scrapes {name} over https without tlsConfig.insecureSkipVerify, "
                                        "but its puller serves a self-signed certificate it generates")
    # every pod that serves metrics is scraped exactly once, by the monitor meant for it
    for name, t in every_pod:
        annotations = t["metadata"].get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true" or not monitors:
            continue
        by = [ref for ref, names in scraped.items() if name in names]
        if len(by) != 1:
            problems.append(f"pods of {name} are scraped by {by or 'no monitor'}, expected exactly one")
    return problems


def validation_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Built-in kinds strictly by kubernetes-validate, custom resources by their CRD."""
    crds = {crdschema.crd_key(d): d for d in docs if d["kind"] == "CustomResourceDefinition"}
    problems = []
    for doc in docs:
        if doc["apiVersion"] == MONITORING:
            problems += monitor_problems(doc)
            continue
        key = (doc["apiVersion"].rpartition("/")[0], doc["kind"])
        if key in crds:
            problems += crdschema.validate_custom_resource(doc, crds[key])
            continue
        try:
            kubernetes_validate.validate(doc, "1.32", strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {err.message}")
    return problems


BASES = [pytest.param(KUSTOMIZE / "base", id="base"), pytest.param(KUSTOMIZE / "overlays" / "quickstart", id="quickstart")]


@needs_kubectl
@pytest.mark.parametrize("base", BASES)
def test_the_monitors_are_valid_and_scrape_every_metrics_endpoint_once(tmp_path: Path, base: Path) -> None:
    docs = compose(tmp_path, base)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs if d["apiVersion"] == MONITORING)
    assert kinds == [("PodMonitor", "meshserve-runtimes"), ("ServiceMonitor", "meshserve-controller"),
                     ("ServiceMonitor", "meshserve-router"), ("ServiceMonitor", "meshserve-scheduler")]
    assert validation_problems(docs) == []
    assert scrape_problems(docs) == []


@needs_kubectl
def test_the_example_overlay_is_the_quickstart_with_the_monitors() -> None:
    docs = build(KUSTOMIZE / "examples" / "quickstart-with-monitoring")
    assert {d["kind"] for d in docs if d["apiVersion"] == MONITORING} == {"ServiceMonitor", "PodMonitor"}
    assert any(d["kind"] == "Namespace" for d in docs)   # the quickstart's
    assert validation_problems(docs) == []
    assert scrape_problems(docs) == []


@needs_kubectl
def test_the_pod_monitor_follows_metrics_port_and_labels_the_runtime(tmp_path: Path) -> None:
    docs = compose(tmp_path, KUSTOMIZE / "base", config_patch="metrics:\n  port: 9191\n")
    config = serving_config(docs)
    assert config.metrics_port == 9191
    assert scrape_problems(docs) == []   # by port name: the controller names its metrics port `prometheus`
    pod_monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    ep = pod_monitor["spec"]["podMetricsEndpoints"][0]
    runtimes = runtime_deployments(docs, config)
    assert {d["metadata"]["name"] for d in runtimes} == {"modelmesh-serving-mlserver-1.x", "modelmesh-serving-triton-2.x",
                                                         "modelmesh-serving-ovms-1.x"}
    for dep in runtimes:
        labels = relabel(_meta_labels(dep["spec"]["template"]["metadata"]["labels"]), ep["relabelings"])
        assert labels is not None and labels["runtime"] == dep["metadata"]["name"].removeprefix("modelmesh-serving-")


@needs_kubectl
@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        pytest.param("metrics:\n  disablePrometheusOperatorSupport: true\n", "disablePrometheusOperatorSupport",
                     id="operator-support-disabled"),
        pytest.param("metrics:\n  enabled: false\n", "metrics.enabled is false", id="metrics-off"),
    ],
)
def test_monitors_with_a_config_that_disables_them_are_refused(tmp_path: Path, patch: str, needle: str) -> None:
    problems = scrape_problems(compose(tmp_path, KUSTOMIZE / "base", config_patch=patch))
    assert any(needle in p for p in problems), problems


def _mutated(docs: list[dict[str, Any]], name: str, change: Any) -> list[dict[str, Any]]:
    out = copy.deepcopy(docs)
    change(next(d for d in out if d["apiVersion"] == MONITORING and d["metadata"]["name"] == name))
    return out


@needs_kubectl
@pytest.mark.parametrize(
    ("name", "change", "needle"),
    [
        pytest.param("meshserve-scheduler", lambda d: d["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "meshserve-schedular"}), "selects 0 Services", id="selector-typo"),
        pytest.param("meshserve-scheduler", lambda d: d["spec"]["endpoints"][0].update(port="metrics"),
                     "no port named 'metrics'", id="service-port-name"),
        pytest.param("meshserve-runtimes", lambda d: d["spec"]["podMetricsEndpoints"][0].update(port="metrics"),
                     "no container port named 'metrics'", id="pod-port-name"),
        pytest.param("meshserve-runtimes", lambda d: d["spec"]["podMetricsEndpoints"][0].update(scheme="http"),
                     "it serves https", id="scheme"),
        pytest.param("meshserve-runtimes", lambda d: d["spec"]["podMetricsEndpoints"][0].pop("tlsConfig"),
                     "without tlsConfig.insecureSkipVerify", id="self-signed-unverifiable"),
        pytest.param("meshserve-router", lambda d: d["spec"]["endpoints"][0].update(scheme="http"),
                     "it serves https", id="router-scheme"),
        pytest.param("meshserve-router", lambda d: d["spec"]["endpoints"][0].pop("tlsConfig"),
                     "without tlsConfig.insecureSkipVerify", id="router-self-signed-unverifiable"),
        pytest.param("meshserve-runtimes", lambda d: d["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/managed-by": "meshserve"}), "scraped by no monitor", id="pod-selector"),
    ],
)
def test_the_scrape_check_catches(tmp_path: Path, name: str, change: Any, needle: str) -> None:
    docs = _mutated(compose(tmp_path, KUSTOMIZE / "base"), name, change)
    problems = scrape_problems(docs)
    assert any(needle in p for p in problems), problems


@needs_kubectl
def test_the_scrape_check_catches_a_router_service_that_selects_runtime_pods(tmp_path: Path) -> None:
    docs = compose(tmp_path, KUSTOMIZE / "base")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "modelmesh-serving")
    service["spec"]["selector"] = {"modelmesh-service": "modelmesh-serving"}  # upstream's label alone
    problems = scrape_problems(docs)
    assert any("expected exactly one" in p for p in problems), problems


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        pytest.param(lambda d: d["spec"].update(endpoint=[]), "unknown spec field", id="spec-typo"),
        pytest.param(lambda d: d["spec"]["endpoints"][0].update(schema="http"), "unknown field", id="endpoint-typo"),
        pytest.param(lambda d: d["spec"]["endpoints"][0].update(scheme="ftp"), "scheme", id="scheme"),
        pytest.param(lambda d: d["spec"]["endpoints"][0].update(
            relabelings=[{"sourceLabels": ["__meta_kubernetes_pod_label_app"], "regex": "x", "action": "keeep"}]),
                     "relabel action", id="action"),
        pytest.param(lambda d: d["spec"]["selector"].update(matchExpressions=[{"key": "a", "operator": "In"}]),
                     "needs values", id="expression"),
        pytest.param(lambda d: d["metadata"].pop("namespace"), "namespace", id="no-namespace"),
    ],
)
def test_the_structure_check_catches(change: Any, needle: str) -> None:
    docs = [d for d in yaml.safe_load_all((COMPONENT / "service-monitors.yaml").read_text()) if d]
    router = copy.deepcopy(next(d for d in docs if d["metadata"]["name"] == "meshserve-router"))
    assert monitor_problems(router) == []
    change(router)
    assert any(needle in p for p in monitor_problems(router)), monitor_problems(router)
