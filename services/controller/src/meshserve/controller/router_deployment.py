"""The router of one served namespace: its Deployment and its Service, from model-serving-config (pure).

Upstream runs ModelMesh's `mm` container in every runtime pod and fronts each namespace with a
Service `<inferenceServiceName>` (`modelmesh-serving.<ns>:8033`). meshserve's routing is the
router's job, so the controller runs one router Deployment and that Service per served
namespace (cluster scope: in each; namespace scope: in its own), and clients keep dialing
`grpc://<inferenceServiceName>.<ns>:<inferenceServicePort>`. In cluster scope the router gets
`MESHSERVE_ROUTER_NAMESPACE=<ns>` so it asks the scheduler for `<ns>__<name>` when a client
names `<name>` (see `scope`).

What each model-serving-config key becomes here (the keys not listed in
`serving_config.NOT_APPLIED_YET` are honoured; `tests/unit/test_router_deployment.py` has one
test per key):

| key | router |
|---|---|
| `inferenceServiceName` | the Deployment's and Service's name |
| `inferenceServicePort` | `MESHSERVE_ROUTER_GRPC_ADDRESS=0.0.0.0:<port>`, the Service's `grpc` port |
| `headlessService` | the Service's `clusterIP: None` (false: a cluster IP) |
| `restProxy.enabled` / `.port` | `MESHSERVE_ROUTER_REST_PORT` (0 when disabled), the Service's `http` port |
| `grpcMaxMessageSizeBytes` | `MESHSERVE_ROUTER_MAX_MESSAGE_BYTES` |
| `enableAccessLogging` | `MESHSERVE_ROUTER_ACCESS_LOG=true` |
| `payloadProcessors` | `MESHSERVE_ROUTER_PAYLOAD_PROCESSORS` (space-separated) |
| `tls.secretName` | the Secret mounted at `/etc/meshserve/tls`, `MESHSERVE_ROUTER_TLS__CERT_FILE` / `KEY_FILE` (`tls.crt`, `tls.key`) |
| `tls.clientAuth: require` | `MESHSERVE_ROUTER_TLS__CA_FILE` (`ca.crt`): client certificates required |
| `metrics.enabled` / `.port` | `MESHSERVE_ROUTER_METRICS_PORT` (0 when disabled), the `prometheus.io/*` annotations, the Service's `prometheus` port |
| `metrics.scheme` | `MESHSERVE_ROUTER_METRICS_SCHEME` (https: the router's certificate, else a self-signed one it generates) and `prometheus.io/scheme` |

Disruptions: a policy/v1 PodDisruptionBudget `<inferenceServiceName>` over the same pods as
the Service, `maxUnavailable: 1` (a node drain moves one router at a time and is never blocked,
whatever the replicas; with the default 2 one always serves), owned by the router Deployment
(`ownerReferences`, controller), so the garbage collector deletes it with the Deployment.

Internal TLS (the controller's `internal_tls_secret`): the Secret mounted read-only at
`internal_tls.TLS_DIR` and `MESHSERVE_INTERNAL_TLS__*` set (`internal_tls.add_to_pod`).

Probes: HTTP `/readyz` and `/healthz` on the REST port (HTTPS with TLS); TCP on the gRPC port
when REST is off or client certificates are required (the kubelet has none).

Invariant: each manifest's `meshserve.io/spec-hash` annotation is a hash of the rest of it
except the Deployment's `spec.replicas`, as for runtime Deployments.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from meshserve.controller.internal_tls import InternalTls
from meshserve.controller.internal_tls import add_to_pod as add_internal_tls
from meshserve.controller.kinds import ResourceKind
from meshserve.controller.serving_config import ServingConfig

SPEC_HASH_ANNOTATION = "meshserve.io/spec-hash"
ROUTER_NAME_LABEL = "app.kubernetes.io/name"
ROUTER_APP = "meshserve-router"
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "router"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ROUTER_MANAGED_BY = "meshserve-controller"
"""Not the runtime Deployments' `modelmesh-controller`: the runtime planner never sees a router."""
TLS_DIR = "/etc/meshserve/tls"
TLS_VOLUME = "router-tls"
SELECTOR = {ROUTER_NAME_LABEL: ROUTER_APP}
"""The router pods' selector (what the base manifests of earlier releases used: immutable)."""
POD_DISRUPTION_BUDGET = ResourceKind("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets")


def router_env(config: ServingConfig, *, namespace: str, scheduler_address: str, cluster_scope: bool) -> list[dict[str, Any]]:
    """The router container's env from the config (see the module's table)."""
    env: list[dict[str, Any]] = [
        {"name": "MESHSERVE_ROUTER_ROUTER_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MESHSERVE_ROUTER_GRPC_ADDRESS", "value": f"0.0.0.0:{config.inference_service_port}"},
        {"name": "MESHSERVE_ROUTER_REST_PORT", "value": str(config.rest_proxy_port if config.rest_proxy_enabled else 0)},
        {"name": "MESHSERVE_ROUTER_METRICS_PORT", "value": str(config.metrics_port if config.metrics_enabled else 0)},
        {"name": "MESHSERVE_ROUTER_METRICS_SCHEME", "value": config.metrics_scheme},
        {"name": "MESHSERVE_ROUTER_SCHEDULER_ADDRESS", "value": scheduler_address},
        {"name": "MESHSERVE_ROUTER_MAX_MESSAGE_BYTES", "value": str(config.grpc_max_message_size_bytes)},
        {"name": "MESHSERVE_ROUTER_LOG_JSON", "value": "true"},
    ]
    if config.enable_access_logging:
        env.append({"name": "MESHSERVE_ROUTER_ACCESS_LOG", "value": "true"})
    if config.payload_processors:
        env.append({"name": "MESHSERVE_ROUTER_PAYLOAD_PROCESSORS", "value": " ".join(config.payload_processors)})
    if config.tls_enabled:
        env.append({"name": "MESHSERVE_ROUTER_TLS__CERT_FILE", "value": f"{TLS_DIR}/tls.crt"})
        env.append({"name": "MESHSERVE_ROUTER_TLS__KEY_FILE", "value": f"{TLS_DIR}/tls.key"})
        if config.tls_client_auth == "require":
            env.append({"name": "MESHSERVE_ROUTER_TLS__CA_FILE", "value": f"{TLS_DIR}/ca.crt"})
    if cluster_scope:
        env.append({"name": "MESHSERVE_ROUTER_NAMESPACE", "value": namespace})
    return env


def _probes(config: ServingConfig) -> dict[str, dict[str, Any]]:
    if not config.rest_proxy_enabled or config.tls_client_auth == "require":
        tcp = {"tcpSocket": {"port": "grpc"}}
        return {"readinessProbe": {**tcp, "periodSeconds": 5},
                "livenessProbe": {**tcp, "periodSeconds": 10, "failureThreshold": 6}}
    scheme = "HTTPS" if config.tls_enabled else "HTTP"
    return {
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http", "scheme": scheme}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": scheme},
                          "periodSeconds": 10, "failureThreshold": 6},
    }


def labels(config: ServingConfig) -> dict[str, str]:
    return {
        ROUTER_NAME_LABEL: ROUTER_APP,
        COMPONENT_LABEL: COMPONENT,
        MANAGED_BY_LABEL: ROUTER_MANAGED_BY,
        "modelmesh-service": config.inference_service_name,
    }


def build_router_deployment(
    config: ServingConfig, *, namespace: str, image: str, replicas: int, scheduler_address: str, cluster_scope: bool,
    internal_tls: InternalTls | None = None,
) -> dict[str, Any]:
    """The router's Deployment (apps/v1) in `namespace`; `internal_tls`: the internal TLS
    Secret mounted into the router, its calls to the scheduler and the pullers on mutual TLS."""
    ports: list[dict[str, Any]] = [{"name": "grpc", "containerPort": config.inference_service_port}]
    if config.rest_proxy_enabled:
        ports.append({"name": "http", "containerPort": config.rest_proxy_port})
    if config.metrics_enabled:
        ports.append({"name": "prometheus", "containerPort": config.metrics_port})
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]   # the root filesystem is read-only
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    if config.tls_enabled:
        mounts.append({"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": TLS_VOLUME, "secret": {"secretName": config.tls_secret_name}})
    container: dict[str, Any] = {
        "name": "router",
        "image": image,
        "args": ["python", "-m", "meshserve.router"],
        "ports": ports,
        "env": router_env(config, namespace=namespace, scheduler_address=scheduler_address, cluster_scope=cluster_scope),
        **_probes(config),
        "resources": {"requests": {"cpu": "300m", "memory": "256Mi"}, "limits": {"cpu": "3", "memory": "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    annotations: dict[str, str] = {}
    if config.metrics_enabled:
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(config.metrics_port),
                       "prometheus.io/path": "/metrics", "prometheus.io/scheme": config.metrics_scheme}
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,    # the router never calls the Kubernetes API
        "terminationGracePeriodSeconds": 90,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"labelSelector": {"matchLabels": dict(SELECTOR)}, "topologyKey": "kubernetes.io/hostname"},
        }]}},
    }
    if config.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in config.image_pull_secrets]
    pod = add_internal_tls(pod, container="router", tls=internal_tls)
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": config.inference_service_name, "namespace": namespace, "labels": labels(config),
                     "annotations": {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(SELECTOR)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "75%", "maxUnavailable": "15%"}},
            "template": {"metadata": {"labels": labels(config), "annotations": annotations}, "spec": pod},
        },
    }
    manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash(manifest)
    return manifest


def build_router_service(config: ServingConfig, *, namespace: str) -> dict[str, Any]:
    """The Service `<inferenceServiceName>` in `namespace`, selecting the router pods only
    (runtime pods carry `modelmesh-service` too, upstream's label)."""
    ports: list[dict[str, Any]] = [{"name": "grpc", "port": config.inference_service_port, "targetPort": "grpc"}]
    if config.rest_proxy_enabled:
        ports.append({"name": "http", "port": config.rest_proxy_port, "targetPort": "http"})
    if config.metrics_enabled:
        ports.append({"name": "prometheus", "port": config.metrics_port, "targetPort": "prometheus"})
    spec: dict[str, Any] = {
        "selector": {**SELECTOR, "modelmesh-service": config.inference_service_name},
        "ports": ports,
    }
    if config.headless_service:
        spec["clusterIP"] = "None"
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": config.inference_service_name, "namespace": namespace, "labels": labels(config),
                     "annotations": {}},
        "spec": spec,
    }
    manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash(manifest)
    return manifest


def build_router_pdb(config: ServingConfig, *, namespace: str, owner_uid: str) -> dict[str, Any]:
    """The router's PodDisruptionBudget in `namespace`, owned by the router Deployment whose
    uid is `owner_uid` (see the module docstring)."""
    manifest: dict[str, Any] = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": config.inference_service_name, "namespace": namespace, "labels": labels(config), "annotations": {},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": config.inference_service_name,
                                 "uid": owner_uid, "controller": True}],
        },
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {**SELECTOR, "modelmesh-service": config.inference_service_name}},
        },
    }
    manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash(manifest)
    return manifest


def is_headless(service: dict[str, Any]) -> bool:
    return str((service.get("spec") or {}).get("clusterIP") or "") == "None"


def spec_hash(manifest: dict[str, Any]) -> str:
    """Hash of the manifest without replicas and without the hash annotation itself."""
    body = copy.deepcopy(manifest)
    body.get("spec", {}).pop("replicas", None)
    body["metadata"].get("annotations", {}).pop(SPEC_HASH_ANNOTATION, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
