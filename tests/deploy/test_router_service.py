"""The public `modelmesh-serving` Service reaches the router pods and nothing else.

Runtime pods carry upstream's `modelmesh-service: modelmesh-serving` label and name their model
server's ports `grpc` / `http` too, so a Service selecting on that label alone would send clients
straight to model servers (headless: their IPs; with a ClusterIP: kube-proxy's pick).
Checked on the rendered base and on the runtime Deployments the controller builds.
"""

from __future__ import annotations

import pytest

from tests.deploy import test_prometheus_operator as m


@pytest.mark.parametrize("overlay", ["base", "overlays/quickstart"])
def test_the_public_service_selects_only_router_pods(overlay: str) -> None:
    docs = m.build(m.KUSTOMIZE / overlay)
    config = m.serving_config(docs)
    deployments = [d for d in docs if d["kind"] == "Deployment"] + m.runtime_deployments(docs, config)
    pods = list(m._pods(deployments))
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "modelmesh-serving")
    selector = {"matchLabels": service["spec"]["selector"]}
    behind = {name for name, template in pods if m.selects(selector, template["metadata"]["labels"])}
    assert behind == {"modelmesh-serving"}, behind
    runtime_pods = [name for name, _ in pods if name != "modelmesh-serving" and name.startswith("modelmesh-serving-")]
    assert runtime_pods, "the check needs runtime pods to tell them apart"
