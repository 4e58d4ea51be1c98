"""The router Deployment and Service the controller runs per namespace: one test per
model-serving-config key it honours (issue 17 item 3), on the rendered manifests, each checked
against the router's own settings class (the env it sets must be what `RouterSettings` reads)."""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest

from meshserve.controller.router_deployment import (
    SPEC_HASH_ANNOTATION,
    TLS_DIR,
    build_router_deployment,
    build_router_pdb,
    build_router_service,
    router_env,
)
from meshserve.controller.serving_config import ServingConfig, parse_config_yaml
from meshserve.router.settings import RouterSettings

NS = "team-a"


def config(text: str = "") -> ServingConfig:
    return parse_config_yaml(text).config


def deployment(cfg: ServingConfig, *, cluster_scope: bool = False) -> dict[str, Any]:
    return build_router_deployment(cfg, namespace=NS, image="meshserve/router:t", replicas=2,
                                   scheduler_address="meshserve-scheduler.modelmesh-serving:8034",
                                   cluster_scope=cluster_scope)


def container(cfg: ServingConfig, **kw: Any) -> dict[str, Any]:
    return deployment(cfg, **kw)["spec"]["template"]["spec"]["containers"][0]


def env(cfg: ServingConfig, **kw: Any) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(cfg, **kw)["env"]}


def router_settings(cfg: ServingConfig, **kw: Any) -> RouterSettings:
    """What the router would run with, from the env the Deployment sets."""
    values = {k: v for k, v in env(cfg, **kw).items() if v}
    with mock.patch.dict(os.environ, values, clear=True):
        return RouterSettings()


def test_defaults_are_upstreams_ports_and_the_env_is_what_the_router_reads() -> None:
    s = router_settings(config())
    assert s.grpc_address == "0.0.0.0:8033" and s.rest_port == 8008 and s.metrics_port == 2112
    assert s.scheduler_address == "meshserve-scheduler.modelmesh-serving:8034"
    assert s.max_message_bytes == 16 * 1024 * 1024 and not s.access_log and s.payload_processors == []
    assert s.tls.cert_file is None
    service = build_router_service(config(), namespace=NS)
    assert service["metadata"]["name"] == "modelmesh-serving" and service["spec"]["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8033, "http": 8008, "prometheus": 2112}


def test_inference_service_name_and_port() -> None:
    cfg = config("inferenceServiceName: mm\ninferenceServicePort: 9033")
    dep, svc = deployment(cfg), build_router_service(cfg, namespace=NS)
    assert dep["metadata"]["name"] == svc["metadata"]["name"] == "mm"
    assert router_settings(cfg).grpc_address == "0.0.0.0:9033"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["grpc"] == 9033
    assert svc["spec"]["selector"]["modelmesh-service"] == "mm"


def test_headless_service_false_gives_a_cluster_ip() -> None:
    assert "clusterIP" not in build_router_service(config("headlessService: false"), namespace=NS)["spec"]


def test_rest_proxy_port_and_disabled() -> None:
    assert router_settings(config("restProxy:\n  port: 9008")).rest_port == 9008
    off = config("restProxy:\n  enabled: false")
    assert env(off)["MESHSERVE_ROUTER_REST_PORT"] == "0"
    assert "http" not in {p["name"] for p in build_router_service(off, namespace=NS)["spec"]["ports"]}
    assert container(off)["readinessProbe"] == {"tcpSocket": {"port": "grpc"}, "periodSeconds": 5}


def test_grpc_max_message_size() -> None:
    assert router_settings(config("grpcMaxMessageSizeBytes: 1048576")).max_message_bytes == 1048576


def test_enable_access_logging() -> None:
    assert router_settings(config("enableAccessLogging: true")).access_log is True


def test_payload_processors() -> None:
    cfg = config("payloadProcessors: ['http://a.ns:8080/', 'https://b.ns/events']")
    assert router_settings(cfg).payload_processors == ["http://a.ns:8080/", "https://b.ns/events"]


def test_tls_secret_is_mounted_and_served_with_https_probes() -> None:
    cfg = config("tls:\n  secretName: router-tls")
    s = router_settings(cfg)
    assert str(s.tls.cert_file) == f"{TLS_DIR}/tls.crt" and str(s.tls.key_file) == f"{TLS_DIR}/tls.key"
    assert s.tls.ca_file is None
    pod = deployment(cfg)["spec"]["template"]["spec"]
    assert {"name": "router-tls", "secret": {"secretName": "router-tls"}} in pod["volumes"]
    assert {"name": "router-tls", "mountPath": TLS_DIR, "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert cfg.http_endpoint(NS).startswith("https://")


def test_tls_client_auth_require_sets_the_ca_and_tcp_probes() -> None:
    cfg = config("tls:\n  secretName: router-tls\n  clientAuth: require")
    assert str(router_settings(cfg).tls.ca_file) == f"{TLS_DIR}/ca.crt"
    assert "tcpSocket" in container(cfg)["livenessProbe"]
    optional = config("tls:\n  secretName: router-tls\n  clientAuth: optional")
    assert router_settings(optional).tls.ca_file is None    # warned as partly honoured (serving_config)


def test_metrics_port_and_disabled() -> None:
    cfg = config("metrics:\n  port: 9112")
    assert router_settings(cfg).metrics_port == 9112
    assert deployment(cfg)["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9112"
    off = config("metrics:\n  enabled: false")
    assert router_settings(off).metrics_port == 0
    assert deployment(off)["spec"]["template"]["metadata"]["annotations"] == {}
    assert "prometheus" not in {p["name"] for p in build_router_service(off, namespace=NS)["spec"]["ports"]}


@pytest.mark.parametrize(("text", "scheme"), [("", "https"), ("metrics:\n  scheme: HTTPS", "https"), ("metrics:\n  scheme: http", "http")])
def test_metrics_scheme_is_what_the_router_serves_and_the_pods_say(text: str, scheme: str) -> None:
    """Upstream's default is https: the router serves its metrics port over TLS (its certificate,
    else one it generates) and its pods are annotated so Prometheus scrapes it that way."""
    cfg = config(text)
    assert router_settings(cfg).metrics_scheme == scheme
    assert deployment(cfg)["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"] == scheme


def test_image_pull_secrets() -> None:
    pod = deployment(config("imagePullSecrets: [{name: regcred}]"))["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_cluster_scope_tells_the_router_its_namespace() -> None:
    assert router_env(config(), namespace=NS, scheduler_address="s:1", cluster_scope=True)[-1] == {
        "name": "MESHSERVE_ROUTER_NAMESPACE", "value": NS}
    assert "MESHSERVE_ROUTER_NAMESPACE" not in env(config())


@pytest.mark.parametrize("text", ["", "tls:\n  secretName: t\n  clientAuth: require", "restProxy:\n  enabled: false\n"
                                  "metrics:\n  enabled: false\nheadlessService: false"])
def test_the_manifests_are_valid_kubernetes_objects(text: str) -> None:
    cfg = config(text)
    for doc in (deployment(cfg), build_router_service(cfg, namespace=NS), build_router_pdb(cfg, namespace=NS, owner_uid="u")):
        kubernetes_validate.validate(doc, "1.32", strict=True)


def test_the_disruption_budget_covers_the_router_pods_only_and_is_owned_by_the_router() -> None:
    cfg = config("inferenceServiceName: mm")
    pdb = build_router_pdb(cfg, namespace=NS, owner_uid="uid-1")
    dep = build_router_deployment(cfg, namespace=NS, image="i", replicas=2, scheduler_address="s:1", cluster_scope=False)
    assert (pdb["metadata"]["name"], pdb["metadata"]["namespace"]) == ("mm", NS)
    assert pdb["metadata"]["ownerReferences"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mm", "uid": "uid-1", "controller": True}]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector == build_router_service(cfg, namespace=NS)["spec"]["selector"]   # the Service's pods
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    runtime_pod = {"modelmesh-service": "mm", "name": "mm-mlserver-1.x"}   # runtime pods share modelmesh-service
    assert not selector.items() <= runtime_pod.items()
    # one router may always go (a node drain never blocks), never both of the default two
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    other = build_router_pdb(cfg, namespace=NS, owner_uid="uid-2")   # a re-created router: replaced
    assert other["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != pdb["metadata"]["annotations"][SPEC_HASH_ANNOTATION]


def test_the_spec_hash_moves_with_the_config_but_not_with_replicas() -> None:
    a, b = deployment(config()), deployment(config("enableAccessLogging: true"))
    assert a["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != b["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    c = build_router_deployment(config(), namespace=NS, image="meshserve/router:t", replicas=7,
                                scheduler_address="meshserve-scheduler.modelmesh-serving:8034", cluster_scope=False)
    assert c["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == a["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
