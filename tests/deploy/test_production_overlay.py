"""The production overlay (deploy/kustomize/overlays/production) and its install guide.

The overlay renders offline with `kubectl kustomize`; every built-in object is valid for
kubernetes-validate in strict mode and every custom resource against the base's CRDs. It ships
no in-cluster Redis, Postgres or MinIO and no Secret at all (the credentials are the user's), so
every Secret key the Deployments read, and the storage-config Secret the runtime pods mount, must
be documented in docs/install.md: its Secrets table and its `kubectl create secret` commands are
parsed here. RBAC, ServiceAccounts and CRDs are the base's, byte for byte; the scheduler runs two
replicas with an Alembic init container, and every container keeps the base's resources. The
doc's own overlay example (production + the prometheus-operator component) builds.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from meshserve.controller import crdschema
from meshserve.controller.serving_config import parse_configmap_data

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "deploy" / "kustomize"
BASE = KUSTOMIZE / "base"
PRODUCTION = KUSTOMIZE / "overlays" / "production"
INSTALL_DOC = REPO / "docs" / "install.md"
K8S_VERSION = "1.32"
KUBECTL = shutil.which("kubectl")

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not on PATH: `kubectl kustomize` is needed to build the manifests"
)


def build(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_containers(dep: dict[str, Any]) -> list[dict[str, Any]]:
    pod = dep["spec"]["template"]["spec"]
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def secret_keys_read(docs: list[dict[str, Any]]) -> set[tuple[str, str, bool]]:
    """(secret, key, optional) for every secretKeyRef in every Deployment's containers."""
    refs: set[tuple[str, str, bool]] = set()
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        for c in pod_containers(dep):
            assert not any("secretRef" in e for e in c.get("envFrom", [])), "envFrom a Secret: keys not documentable"
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"], bool(ref.get("optional"))))
    return refs


def doc_secret_table(text: str) -> dict[tuple[str, str], str]:
    """Rows of install.md's Secrets table: (`secret`, `key`) -> the 'required' cell."""
    rows: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*`([a-z0-9-]+)`\s*\|\s*`([^`]+)`[^|]*\|\s*(yes|no)\b", line)
        if m:
            rows[(m.group(1), m.group(2))] = m.group(3)
    return rows


def doc_create_commands(text: str) -> dict[str, set[str]]:
    """`kubectl [-n NS] create secret generic NAME --from-literal=KEY=... --from-file=KEY=...` in the
    doc's bash blocks (lines joined at trailing backslashes): NAME -> its keys."""
    created: dict[str, set[str]] = {}
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            at = next((i for i in range(len(words) - 3) if words[i:i + 3] == ["create", "secret", "generic"]), None)
            if not words or words[0] != "kubectl" or at is None:
                continue
            name = words[at + 3]
            keys = created.setdefault(name, set())
            for w in words:
                m = re.match(r"--from-(?:literal|file)=([^=]+)=", w)
                if m:
                    keys.add(m.group(1))
    return created


@needs_kubectl
def test_every_object_is_valid() -> None:
    docs = build(PRODUCTION)
    crds = {crdschema.crd_key(d): d for d in docs if d["kind"] == "CustomResourceDefinition"}
    problems: list[str] = []
    for doc in docs:
        ref = f"{doc['kind']}/{doc['metadata']['name']}"
        key = (doc["apiVersion"].rpartition("/")[0], doc["kind"])
        if key in crds:
            problems += [f"{ref}: {e}" for e in crdschema.validate_custom_resource(doc, crds[key])]
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{ref}: {err.message} at {list(err.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{ref}: no schema for {doc['apiVersion']} {doc['kind']}")
    assert problems == []
    assert all(d["metadata"].get("namespace") in (None, "modelmesh-serving") for d in docs)


@needs_kubectl
def test_no_in_cluster_dependencies_and_no_secrets() -> None:
    docs = build(PRODUCTION)
    images = [c["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet") for c in pod_containers(d)]
    assert images and not [i for i in images if re.search(r"(^|/)(redis|postgres|minio|modelmesh-minio)", i)]
    names = {d["metadata"]["name"] for d in docs}
    assert not names & {"meshserve-redis", "meshserve-postgres", "minio"}
    assert [d for d in docs if d["kind"] in ("Secret", "Namespace", "PersistentVolumeClaim")] == []
    quickstart = build(KUSTOMIZE / "overlays" / "quickstart")   # the check above can fail: it does there
    assert {"meshserve-redis", "meshserve-postgres", "minio"} <= {d["metadata"]["name"] for d in quickstart}


@needs_kubectl
def test_every_secret_key_read_is_documented_with_a_create_command() -> None:
    docs = build(PRODUCTION)
    text = INSTALL_DOC.read_text()
    table = doc_secret_table(text)
    created = doc_create_commands(text)
    refs = secret_keys_read(docs)
    assert {name for name, _, _ in refs} == {"meshserve-infra"}
    for name, key, optional in sorted(refs):
        assert (name, key) in table, f"docs/install.md's Secrets table lacks `{name}` / `{key}`"
        assert table[(name, key)] == ("no" if optional else "yes"), f"{name}/{key}: required is {not optional}"
        if not optional:
            assert key in created.get(name, set()), f"no `kubectl create secret generic {name}` with {key}"
    documented = {(n, k) for n, k in table if n == "meshserve-infra"}
    assert documented == {(n, k) for n, k, _ in refs}, "the table documents keys nothing reads"
    # the runtime pods mount the Secret model-serving-config names (storageSecretName)
    cm = find(docs, "ConfigMap", "model-serving-config")
    storage = parse_configmap_data(cm["data"]).config.storage_secret_name
    assert any(n == storage for n, _ in table), f"`{storage}` is not in the Secrets table"
    assert storage in created, f"no `kubectl create secret generic {storage}` command"


def test_the_doc_parsers_see_what_is_written() -> None:
    text = (
        "| `s` | `k1` | yes | x |\n| `c` | `<k>`, one each | yes | z |\n| `s` | `k2` | no | y |\n| secret | key | required |\n"
        "```bash\nkubectl -n ns create secret generic s \\\n  --from-literal=k1='a=b' \\\n"
        "  --from-file=k3=./f.json\n```\n```yaml\nkubectl create secret generic t --from-literal=z=1\n```\n"
    )
    assert doc_secret_table(text) == {("s", "k1"): "yes", ("c", "<k>"): "yes", ("s", "k2"): "no"}
    assert doc_create_commands(text) == {"s": {"k1", "k3"}}


@needs_kubectl
def test_rbac_accounts_and_crds_are_the_base_ones() -> None:
    kinds = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount",
             "ClusterServingRuntime", "ConfigMap", "Service", "PodDisruptionBudget"}

    def pick(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in kinds}

    base, prod = pick(build(BASE)), pick(build(PRODUCTION))
    assert sorted(prod) == sorted(base)
    assert [k for k in base if base[k] != prod[k]] == []


@needs_kubectl
def test_replicas_migrations_and_resources() -> None:
    base, prod = build(BASE), build(PRODUCTION)
    scheduler = find(prod, "Deployment", "meshserve-scheduler")
    assert scheduler["spec"]["replicas"] == 2
    assert scheduler["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    budget = find(prod, "PodDisruptionBudget", "meshserve-scheduler")["spec"]
    assert scheduler["spec"]["replicas"] - budget["maxUnavailable"] >= 1   # a drain keeps one scheduler
    pod = scheduler["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    (main,) = pod["containers"]
    assert migrate["image"] == main["image"] == "meshserve/scheduler:0.1.0"
    assert migrate["args"] == ["python", "-m", "meshserve.scheduler", "migrate"]
    main_db = next(e for e in main["env"] if e["name"] == "MESHSERVE_DATABASE_URL")
    assert main_db in migrate["env"]   # migrates the database the scheduler then uses
    assert migrate["securityContext"] == main["securityContext"]
    assert {m["mountPath"] for m in migrate["volumeMounts"]} == {"/tmp"}
    assert {"requests", "limits"} <= set(migrate["resources"])

    controller = find(prod, "Deployment", "meshserve-controller")
    assert controller["spec"]["replicas"] == 1 and controller["spec"]["strategy"]["type"] == "Recreate"
    env = {e["name"]: e.get("value") for e in controller["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MESHSERVE_CONTROLLER_ROUTER_REPLICAS"] == "3"
    base_env = [e["name"] for e in find(base, "Deployment", "meshserve-controller")["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert list(env) == base_env   # replaced in place, nothing dropped or duplicated

    for name in ("meshserve-scheduler", "meshserve-controller"):
        before = {c["name"]: c["resources"] for c in find(base, "Deployment", name)["spec"]["template"]["spec"]["containers"]}
        after = {c["name"]: c["resources"] for c in find(prod, "Deployment", name)["spec"]["template"]["spec"]["containers"]}
        assert after == before, name


@needs_kubectl
def test_the_monitoring_overlay_in_the_doc_builds(tmp_path: Path) -> None:
    """install.md's `my-install/kustomization.yaml` (production + the prometheus-operator
    component), written beside a link to this checkout's deploy/ as the doc's paths expect."""
    text = INSTALL_DOC.read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "# my-install/kustomization.yaml" in b]
    (tmp_path / "deploy").symlink_to(REPO / "deploy")
    (tmp_path / "my-install").mkdir()
    (tmp_path / "my-install" / "kustomization.yaml").write_text(block)
    docs = build(tmp_path / "my-install")
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert sum(k == "ServiceMonitor" for k, _ in kinds) == 3 and sum(k == "PodMonitor" for k, _ in kinds) == 1
    plain = {(d["kind"], d["metadata"]["name"]) for d in build(PRODUCTION)}
    assert plain <= set(kinds)
