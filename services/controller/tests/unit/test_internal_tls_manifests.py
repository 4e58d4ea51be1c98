"""Internal TLS in Kubernetes mode, on the rendered objects: with the controller's internal TLS
Secret, the runtime pods' puller and each router mount it read-only and carry
`MESHSERVE_INTERNAL_TLS__*`, which the puller's and the router's own settings classes turn into
TLS on every internal hop (their gRPC server, their calls to the scheduler); the model server
container gets nothing; without it nothing changes; turning it on changes the spec hash (the
pods roll)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
import yaml

from meshserve.controller import deployments as deploy
from meshserve.controller import reconcile as rc
from meshserve.controller import runtimes as rts
from meshserve.controller.internal_tls import TLS_DIR, InternalTls, add_to_pod
from meshserve.controller.router_deployment import build_router_deployment
from meshserve.controller.serving_config import ServingConfig, parse_config_yaml
from meshserve.controller.settings import ControllerSettings
from meshserve.controller.storage_config import StorageConfig

REPO = Path(__file__).resolve().parents[4]
RUNTIME = rts.parse_runtime(yaml.safe_load((REPO / "deploy/kustomize/base/runtimes/mlserver-1.x.yaml").read_text()),
                            cluster_scoped=True)
TLS = InternalTls(secret_name="meshserve-internal-tls", server_name="meshserve-internal")


def runtime_deployment(tls: InternalTls | None) -> dict[str, Any]:
    return deploy.build_runtime_deployment(runtime=RUNTIME, config=ServingConfig(), namespace="ns", replicas=1,
                                           storage=StorageConfig(), scheduler_address="s:8034", internal_tls=tls)


def router(tls: InternalTls | None) -> dict[str, Any]:
    return build_router_deployment(ServingConfig(), namespace="ns", image="i", replicas=2, scheduler_address="s:8034",
                                   cluster_scope=False, internal_tls=tls)


def container(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in manifest["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env") or []}


def settings_from(c: dict[str, Any], cls: type) -> Any:
    values = {k: v for k, v in env_of(c).items() if v and "$(" not in v}
    with mock.patch.dict(os.environ, values, clear=True):
        return cls()


EXPECTED = {
    "MESHSERVE_INTERNAL_TLS__CERT_FILE": f"{TLS_DIR}/tls.crt",
    "MESHSERVE_INTERNAL_TLS__KEY_FILE": f"{TLS_DIR}/tls.key",
    "MESHSERVE_INTERNAL_TLS__CA_FILE": f"{TLS_DIR}/ca.crt",
    "MESHSERVE_INTERNAL_TLS__SERVER_NAME": "meshserve-internal",
}


@pytest.mark.parametrize("build,name", [(runtime_deployment, "puller"), (router, "router")])
def test_the_secret_is_mounted_and_the_env_set_in_that_container_only(build: Any, name: str) -> None:
    manifest = build(TLS)
    kubernetes_validate.validate(manifest, "1.32", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "internal-tls"]
    assert volume == {"name": "internal-tls", "secret": {"secretName": "meshserve-internal-tls"}}
    target = container(manifest, name)
    assert {"name": "internal-tls", "mountPath": TLS_DIR, "readOnly": True} in target["volumeMounts"]
    assert EXPECTED.items() <= env_of(target).items()
    for other in pod["containers"]:
        if other["name"] != name:
            assert not any(k.startswith("MESHSERVE_INTERNAL_TLS") for k in env_of(other)), other["name"]
            assert all(m["name"] != "internal-tls" for m in other.get("volumeMounts") or [])


def test_the_puller_and_the_router_read_it_as_tls_on_their_internal_hops() -> None:
    from meshserve.puller.settings import PullerSettings
    from meshserve.router.settings import RouterSettings

    puller = settings_from(container(runtime_deployment(TLS), "puller"), PullerSettings)
    for s in (puller, settings_from(container(router(TLS), "router"), RouterSettings)):
        assert s.internal_tls.cert_file == Path(f"{TLS_DIR}/tls.crt")
        assert s.internal_tls.ca_file == Path(f"{TLS_DIR}/ca.crt")
        assert s.scheduler_tls.cert_file == Path(f"{TLS_DIR}/tls.crt"), type(s).__name__
        assert s.scheduler_tls.server_name == "meshserve-internal"
    assert puller.tls.key_file == Path(f"{TLS_DIR}/tls.key")    # the puller's gRPC server presents it


def test_without_the_secret_nothing_changes_and_turning_it_on_rolls_the_pods() -> None:
    for build, name in ((runtime_deployment, "puller"), (router, "router")):
        plain = build(None)
        assert not any(k.startswith("MESHSERVE_INTERNAL_TLS") for k in env_of(container(plain, name)))
        assert all(v["name"] != "internal-tls" for v in plain["spec"]["template"]["spec"]["volumes"])
        assert (plain["metadata"]["annotations"][deploy.SPEC_HASH_ANNOTATION]
                != build(TLS)["metadata"]["annotations"][deploy.SPEC_HASH_ANNOTATION])
    no_name = env_of(container(router(InternalTls(secret_name="s")), "router"))
    assert "MESHSERVE_INTERNAL_TLS__SERVER_NAME" not in no_name and "MESHSERVE_INTERNAL_TLS__CA_FILE" in no_name


def test_the_plan_renders_every_runtime_deployment_with_it() -> None:
    plan = rc.plan_runtimes(runtimes={RUNTIME.name: RUNTIME}, predictors=[], observed={}, records={},
                            config=parse_config_yaml("scaleToZero:\n  enabled: false\n").config, namespace="ns",
                            storage=StorageConfig(), scheduler_address="s:8034", now=0.0, internal_tls=TLS)
    (create,) = plan.actions
    assert create.manifest is not None
    assert EXPECTED.items() <= env_of(container(dict(create.manifest), "puller")).items()


def test_add_to_pod_copies_refuses_a_missing_container_and_replaces_an_env_it_sets() -> None:
    pod = {"containers": [{"name": "puller", "env": [{"name": "MESHSERVE_INTERNAL_TLS__CA_FILE", "value": "/old"}]}]}
    before = copy.deepcopy(pod)
    out = add_to_pod(pod, container="puller", tls=TLS)
    assert pod == before
    assert [e["value"] for e in out["containers"][0]["env"] if e["name"] == "MESHSERVE_INTERNAL_TLS__CA_FILE"] == [f"{TLS_DIR}/ca.crt"]
    assert add_to_pod(pod, container="puller", tls=None) is pod
    with pytest.raises(ValueError, match="no container 'router'"):
        add_to_pod(pod, container="router", tls=TLS)
    with pytest.raises(ValueError, match="needs a name"):
        InternalTls(secret_name="")


def test_the_controller_settings_default_to_off() -> None:
    with mock.patch.dict(os.environ, {}, clear=True):
        s = ControllerSettings()
    assert (s.internal_tls_secret, s.internal_tls_server_name) == ("", "")
    with mock.patch.dict(os.environ, {"MESHSERVE_CONTROLLER_INTERNAL_TLS_SECRET": "t"}, clear=True):
        assert ControllerSettings().internal_tls_secret == "t"
