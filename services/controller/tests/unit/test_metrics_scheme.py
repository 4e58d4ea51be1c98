"""`metrics.scheme` in the rendered runtime Deployments: the puller is told to serve its metrics
port over that scheme (`MESHSERVE_PULLER_METRICS_SCHEME`; https without a certificate: one it
generates) and the pod is annotated `prometheus.io/scheme` with the same, so annotation-based
scrapers and the kustomize PodMonitor use what is served. Upstream's default, https, is
meshserve's too (`ServingConfig.metrics_scheme`). Each manifest is checked with
kubernetes-validate (strict), and its metrics env is read back by the puller's own settings.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from meshserve.controller import deployments as deploy
from meshserve.controller import runtimes as rts
from meshserve.controller.serving_config import ServingConfig, parse_config_yaml
from meshserve.controller.storage_config import StorageConfig
from meshserve.puller.settings import PullerSettings

REPO = Path(__file__).resolve().parents[4]
ML = rts.parse_runtime(
    yaml.safe_load((REPO / "deploy/kustomize/base/runtimes/mlserver-1.x.yaml").read_text()), cluster_scoped=True
)


def render(config: ServingConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(the puller's env, the pod template's annotations) of the mlserver-1.x Deployment."""
    manifest: dict[str, Any] = deploy.build_runtime_deployment(
        runtime=ML, config=config, namespace="ns", replicas=1, storage=StorageConfig(),
        scheduler_address="meshserve-scheduler:8034",
    )
    kubernetes_validate.validate(manifest, "1.32", strict=True)
    template = manifest["spec"]["template"]
    puller = next(c for c in template["spec"]["containers"] if c["name"] == "puller")
    return {e["name"]: e.get("value", "") for e in puller["env"]}, template["metadata"].get("annotations", {})


def puller_reads(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> PullerSettings:
    for name in ("MESHSERVE_PULLER_METRICS_PORT", "MESHSERVE_PULLER_METRICS_SCHEME"):
        if name in env:
            monkeypatch.setenv(name, env[name])
    return PullerSettings()


@pytest.mark.parametrize(("text", "scheme"), [
    ("", "https"),                                 # no metrics section: upstream's default
    ("metrics:\n  scheme: https\n", "https"),
    ("metrics:\n  scheme: HTTPS\n", "https"),      # values are read case-insensitively
    ("metrics:\n  scheme: http\n  port: 9100\n", "http"),
])
def test_the_puller_serves_and_the_pod_is_annotated_with_the_configs_scheme(
    text: str, scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = parse_config_yaml(text).config
    env, annotations = render(config)
    assert env["MESHSERVE_PULLER_METRICS_SCHEME"] == annotations["prometheus.io/scheme"] == scheme
    assert env["MESHSERVE_PULLER_METRICS_PORT"] == annotations["prometheus.io/port"] == str(config.metrics_port)
    settings = puller_reads(env, monkeypatch)
    assert (settings.metrics_scheme, settings.metrics_port) == (scheme, config.metrics_port)


def test_metrics_off_sets_no_scheme_and_no_annotation() -> None:
    env, annotations = render(parse_config_yaml("metrics:\n  enabled: false\n  scheme: https\n").config)
    assert "MESHSERVE_PULLER_METRICS_SCHEME" not in env and "MESHSERVE_PULLER_METRICS_PORT" not in env
    assert not any(k.startswith("prometheus.io/") for k in annotations)


def test_the_runtimes_own_annotation_still_wins() -> None:
    """A ServingRuntime that annotates its pods itself keeps its value: the runtime's
    annotations come last, as upstream."""
    runtime = replace(ML, spec={**ML.spec, "annotations": {"prometheus.io/scheme": "http"}})
    manifest = deploy.build_runtime_deployment(
        runtime=runtime, config=ServingConfig(), namespace="ns", replicas=1,
        storage=StorageConfig(), scheduler_address="s:8034",
    )
    assert manifest["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"] == "http"
