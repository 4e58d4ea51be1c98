"""docker-compose.yml and docker/Dockerfile agree with each other (checked offline: no Docker here).

What a `docker compose config` + a first `up` would catch: build targets that do not exist,
references to unknown services/volumes, host-port clashes, addresses pointing at a service that
does not listen on that port, runtime pods that are not wired like a Kubernetes pod.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[4]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def stages() -> dict[str, set[int]]:
    """Dockerfile stage name -> ports it EXPOSEs."""
    out: dict[str, set[int]] = {}
    current = None
    for line in DOCKERFILE.splitlines():
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I):
            current = m.group(1)
            out[current] = set()
        elif (m := re.match(r"EXPOSE\s+(.+)", line)) and current:
            out[current] |= {int(p) for p in m.group(1).split()}
    return out


def image_target() -> dict[str, str]:
    """image name -> Dockerfile target that builds it."""
    return {s["image"]: s["build"]["target"] for s in SERVICES.values() if "build" in s}


def service_ports(name: str) -> set[int]:
    svc = SERVICES[name]
    known = {"redis": {6379}, "postgres": {5432}, "minio": {9000}}
    if name in known:
        return known[name]
    target = image_target().get(svc.get("image", ""))
    ports = set(stages().get(target or "", set()))
    # a pod's sidecars listen inside the same network namespace
    for other in SERVICES.values():
        if other.get("network_mode") == f"service:{name}":
            ports |= stages().get(image_target().get(other["image"], ""), set())
    return ports


def test_required_services_exist() -> None:
    assert {"redis", "postgres", "minio", "scheduler", "router", "controller"} <= SERVICES.keys()
    assert len([s for s in SERVICES if s.startswith("mlserver-")]) >= 2
    assert len([s for s in SERVICES if s.startswith("puller-")]) >= 2


def test_build_targets_exist_and_every_meshserve_image_is_built() -> None:
    targets = stages()
    for name, svc in SERVICES.items():
        if "build" in svc:
            assert svc["build"]["target"] in targets, name
            assert (REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
        if svc.get("image", "").startswith("meshserve/"):
            assert svc["image"] in image_target(), f"{name}: nothing builds {svc['image']}"
    assert {"router", "scheduler", "controller", "puller", "mlserver"} <= targets.keys()


def test_references_resolve() -> None:
    volumes = set(COMPOSE.get("volumes", {}))
    for name, svc in SERVICES.items():
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
        if mode := svc.get("network_mode"):
            assert mode.startswith("service:") and mode.split(":", 1)[1] in SERVICES
            assert not svc.get("ports"), f"{name}: ports must be published on the pod's main service"
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in volumes, f"{name}: volume {source} not declared"


def test_host_ports_are_unique() -> None:
    published = [p.split(":")[0] for svc in SERVICES.values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published))
    assert {"8033", "8008", "8080"} <= set(published)


ADDRESS = re.compile(r"^(?:[a-z+]+://)?(?:[^@/]*@)?([a-z][a-z0-9-]*):(\d+)(?:/.*)?$")


def test_addresses_point_at_listening_services() -> None:
    checked = 0
    for name, svc in SERVICES.items():
        for key, value in (svc.get("environment") or {}).items():
            m = ADDRESS.match(str(value))
            if not m or m.group(1) in ("localhost",):
                continue
            host, port = m.group(1), int(m.group(2))
            assert host in SERVICES, f"{name}.{key}: unknown host {host}"
            assert port in service_ports(host), f"{name}.{key}: {host} does not listen on {port}"
            checked += 1
    assert checked >= 5


def test_runtime_pods_are_wired_like_kubernetes_pods() -> None:
    pod_ids = set()
    for name, svc in SERVICES.items():
        if not name.startswith("puller-"):
            continue
        main = svc["network_mode"].split(":", 1)[1]
        assert main.startswith("mlserver-")
        shared = {v.split(":")[0] for v in svc["volumes"]} & {v.split(":")[0] for v in SERVICES[main]["volumes"]}
        assert shared, f"{name} shares no /models volume with {main}"
        env = svc["environment"]
        pod_ids.add(env["MESHSERVE_PULLER_POD_ID"])
        assert env["MESHSERVE_PULLER_ADVERTISE_ADDRESS"] == f"{main}:8085"
        assert env["MESHSERVE_PULLER_MODEL_SERVER_ADVERTISE_GRPC"] == f"{main}:8001"
        assert env["MESHSERVE_PULLER_MODEL_DIR"] == "/models"
        assert env["MESHSERVE_PULLER_MODEL_SERVER_GRPC"].endswith(":8001")
    assert len(pod_ids) == len([s for s in SERVICES if s.startswith("puller-")])


def unknown_settings_env(names: list[str]) -> list[str]:
    """MESHSERVE_<SVC>_* names that are not a field of that service's settings class (if it exists yet)."""
    import importlib

    problems = []
    for key in names:
        m = re.match(r"MESHSERVE_(PULLER|SCHEDULER|CONTROLLER|ROUTER)_(.+)", key)
        if not m:
            continue
        module_name = f"meshserve.{m.group(1).lower()}.settings"
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # that service's settings are not written yet
        cls = next(v for k, v in vars(module).items() if k.endswith("Settings") and hasattr(v, "model_fields")
                   and getattr(v, "__module__", "") == module_name)
        if m.group(2).lower() not in cls.model_fields:
            problems.append(f"{key} is not a {cls.__name__} field")
    return problems


def test_env_names_exist_in_the_settings_classes() -> None:
    problems = [f"{name}: {p}" for name, svc in SERVICES.items() for p in unknown_settings_env(list(svc.get("environment") or {}))]
    assert problems == []


def test_controller_runs_in_local_mode() -> None:
    env = SERVICES["controller"]["environment"]
    assert env["MESHSERVE_CONTROLLER_MODE"] == "local"
    assert env["MESHSERVE_CONTROLLER_SCHEDULER_ADDRESS"] == "scheduler:8034"


@pytest.mark.parametrize("path", sorted((REPO / "docker" / "storage-config").iterdir()), ids=lambda p: p.name)
def test_storage_config_files_are_json_objects(path: Path) -> None:
    data = json.loads(path.read_text())
    assert data["type"] == "s3" and data["bucket"] == "modelmesh-example-models"
