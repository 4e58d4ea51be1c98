"""Model sizes measured inside a runtime pod, against the local figures (`python -m bench.sizes --in-pod`).

Needs root and Podman with meshserve's images (`scripts/images.sh meshserve`, or
`TARGETS="puller mlserver" scripts/images.sh meshserve`); not part of `make test`.

What runs: the local stack's Redis, Postgres, S3 (moto) and scheduler as host processes
(devstack), one local MLServer pod (processes, as `make bench-sizes` measures), and one runtime
pod the way Kubernetes runs it: the controller's own Deployment (`build_runtime_deployment` on
`deploy/kustomize/base/runtimes/mlserver-1.x.yaml`) turned into a Podman pod
(`podman pod create --share pid,net,ipc`: `shareProcessNamespace: true`), its `mlserver` and
`puller` containers started from `meshserve/mlserver` and `meshserve/puller` with the
Deployment's env (downward API and `$(VAR)`s resolved as the kubelet does, bench.sizes.podspec),
security context (uid 10001, read-only root, every capability dropped, no-new-privileges) and
memory limit; its emptyDirs and the storage-config Secret are host folders.

Differences from a cluster, all in how the pod is reached, none in how it measures:
* the pod uses the host's network namespace (`--network host`), so the downward API's
  `status.podIP` is 127.0.0.1 and the puller reaches the host's scheduler and S3 on loopback;
  the Deployment's fixed ports (8001, 8002, 8085, 8089, 2112) must be free on the host;
* the puller registers under the runtime id `mlserver-in-pod` (the Deployment's `runtime_id`),
  so the scheduler places the in-pod copies on it and the local copies on the local pod.

Each MLServer format of `bench.sizes.catalog` is loaded N times on each pod (loads serialised),
then one random forest of each size in FORESTS (bench.sizes.forests' models, tens of MiB: the
examples are too small for the ratio to mean much);
per copy: the size the local puller measured, the size the in-pod puller measured (the
scheduler's `placed` event), and the growth of the MLServer container's cgroup working set
over the load (`usage - inactive_file`, what the kubelet and the OOM killer count).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.sizes import formats
from bench.sizes.catalog import EXAMPLES, ROOT, Case, cases
from bench.sizes.forests import forest
from bench.sizes.podspec import Row, Volume, cgroup_working_set, parse_memory_stat, run_args, table
from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig
from meshserve.controller.deployments import build_runtime_deployment
from meshserve.controller.runtimes import parse_runtime
from meshserve.controller.serving_config import ServingConfig
from meshserve.controller.storage_config import parse_storage_secret

RUNTIME_YAML = ROOT / "deploy" / "kustomize" / "base" / "runtimes" / "mlserver-1.x.yaml"
IN_POD_RUNTIME = "mlserver-in-pod"
POD_NAME = "meshserve-bench-sizes-pod"
IMAGES = ("meshserve/mlserver:0.1.0", "meshserve/puller:0.1.0")
PUBLISHED = (8001, 8002, 8085, 8089, 2112)
FORESTS = (20, 400, 1600)  # trees per random forest (bench.sizes.forests' models): sizes the examples cannot show


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "docker/podman/containers.conf"))}
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True, env=env)


def preflight() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench.sizes --in-pod: run as root (rootful Podman)")
    if shutil.which("podman") is None:
        raise SystemExit("bench.sizes --in-pod: podman not found (apt-get install -y podman buildah runc debootstrap)")
    for image in IMAGES:
        if podman("image", "exists", image, check=False).returncode != 0:
            raise SystemExit(f"bench.sizes --in-pod: image {image} missing: TARGETS='puller mlserver' scripts/images.sh meshserve")
    import socket
    for port in PUBLISHED:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                raise SystemExit(f"bench.sizes --in-pod: port {port} is in use on the host (the pod uses the host's network)") from None


def render(scheduler_address: str) -> dict[str, Any]:
    """The controller's Deployment for the default MLServer runtime."""
    runtime = parse_runtime(yaml.safe_load(RUNTIME_YAML.read_text()), cluster_scoped=True)
    return build_runtime_deployment(
        runtime=runtime, config=ServingConfig(), namespace="bench", replicas=1,
        storage=parse_storage_secret({}, base64_encoded=False), scheduler_address=scheduler_address,
        runtime_id=IN_POD_RUNTIME,
    )


def _host_volumes(manifest: dict[str, Any], root: Path, storage_config: Path, uid: int) -> dict[str, Volume]:
    """A host folder per pod volume; the Secret is a copy of the stack's storage-config readable by `uid`."""
    out: dict[str, Volume] = {}
    for vol in manifest["spec"]["template"]["spec"]["volumes"]:
        d = root / "volumes" / vol["name"]
        d.mkdir(parents=True, exist_ok=True)
        if "secret" in vol:
            for f in storage_config.iterdir():
                shutil.copy(f, d / f.name)
                os.chown(d / f.name, uid, uid)
                os.chmod(d / f.name, 0o400)
            os.chmod(d, 0o500)
            out[vol["name"]] = Volume(str(d), read_only=True)
        elif "emptyDir" in vol:
            out[vol["name"]] = Volume(str(d))
        else:
            continue
        os.chown(d, uid, uid)
    return out


class Pod:
    """The runtime pod under Podman."""

    def __init__(self, manifest: dict[str, Any], root: Path, storage_config: Path) -> None:
        self.manifest = manifest
        spec = manifest["spec"]["template"]["spec"]
        self.security = spec.get("securityContext") or {}
        uid = int(self.security.get("runAsUser", 10001))
        self.volumes = _host_volumes(manifest, root, storage_config, uid)
        self.pod_id = f"{manifest['metadata']['name']}-bench0"
        self.containers = spec["containers"]
        self.root = root

    def start(self) -> None:
        podman("pod", "rm", "--force", "--ignore", POD_NAME, check=False)
        podman("pod", "create", "--name", POD_NAME, "--share", "pid,net,ipc", "--network", "host")
        fields = {"metadata.name": self.pod_id, "metadata.namespace": "bench", "status.podIP": "127.0.0.1"}
        for c in self.containers:
            args = run_args(c, pod=POD_NAME, name=f"{POD_NAME}-{c['name']}", pod_security=self.security,
                            volumes=self.volumes, fields=fields)
            (self.root / f"{c['name']}.args.json").write_text(json.dumps(args, indent=1))
            result = podman("run", *args, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"podman run {c['name']}: {result.stderr.strip()}")

    def logs(self, container: str) -> str:
        r = podman("logs", f"{POD_NAME}-{container}", check=False)
        return r.stdout[-3000:] + r.stderr[-3000:]

    def running(self, container: str) -> bool:
        r = podman("inspect", "--format", "{{.State.Running}}", f"{POD_NAME}-{container}", check=False)
        return r.stdout.strip() == "true"

    def cgroup_dir(self, container: str) -> Path:
        """The container's memory cgroup folder (v1 hybrid: memory controller; v2: unified)."""
        pid = podman("inspect", "--format", "{{.State.Pid}}", f"{POD_NAME}-{container}").stdout.strip()
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            hid, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                d = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
                if (d / "memory.usage_in_bytes").exists():
                    return d
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            hid, controllers, path = line.split(":", 2)
            if hid == "0":
                d = Path("/sys/fs/cgroup") / path.lstrip("/")
                if (d / "memory.current").exists():
                    return d
        raise RuntimeError(f"no memory cgroup found for {container} (pid {pid}): {Path(f'/proc/{pid}/cgroup').read_text()}")

    def stop(self) -> None:
        podman("pod", "rm", "--force", "--time", "5", POD_NAME, check=False)


def working_set(cgroup: Path) -> int:
    usage_file = cgroup / "memory.usage_in_bytes"
    usage = int((usage_file if usage_file.exists() else cgroup / "memory.current").read_text())
    return cgroup_working_set(usage, parse_memory_stat((cgroup / "memory.stat").read_text()))


def _register_and_load(stack: Stack, name: str, case: Case, runtime: str, *, timeout: float = 180) -> formats.Copy:
    """Register and `:load` one copy; its size from the scheduler's `placed` event, waited for up
    to `timeout` (a large model on a loaded host can be placed after `:load` has answered)."""
    response = stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{case.path}", format=case.format, runtime=runtime)
    if response.status_code != 201:
        raise RuntimeError(f"registering {name}: {response.text}")
    response = stack.admin("POST", f"/v1/models/{name}:load")
    if response.status_code != 200:
        raise RuntimeError(f"loading {name}: {response.status_code} {response.text[:500]}")
    deadline = time.monotonic() + timeout
    while True:
        items = stack.admin("GET", "/v1/events", params={"model": name, "limit": 50}).json()["items"]
        placed = [e for e in items if e["kind"] == "placed"]
        if placed:
            details = dict(placed[0]["details"] or {})
            return formats.Copy(name, int(details["size"]), bool(details.get("measured")))
        if time.monotonic() > deadline:
            raise RuntimeError(f"no placed event for {name} in {timeout:.0f} s; events: {[e['kind'] for e in items]}")
        time.sleep(0.5)


def main(*, copies: int, labels: set[str] | None, keep: bool, forests: tuple[int, ...] = FORESTS) -> None:
    preflight()
    root = Path(tempfile.mkdtemp(prefix="bench-sizes-pod-"))
    os.chmod(root, 0o755)
    stack = Stack(StackConfig(root=root / "stack", pods=0, pod_capacity_bytes=16 << 30))
    pod: Pod | None = None
    rows: list[Row] = []
    started = time.monotonic()
    try:
        stack.start()
        stack.upload_examples(EXAMPLES)
        local = stack.start_pod(pod_id="local-mlserver-0")
        manifest = render(stack.scheduler_grpc)
        (root / "deployment.json").write_text(json.dumps(manifest, indent=1))
        pod = Pod(manifest, root / "pod", stack.storage_config_dir)
        pod.start()
        stack.wait_for_pods([local], timeout=180)

        def registered() -> bool:
            listed = {p["id"] for p in stack.admin("GET", "/v1/pods").json()["items"]}
            return pod is not None and pod.pod_id in listed

        deadline = time.monotonic() + 240
        while not registered():
            for c in ("mlserver", "puller"):
                if not pod.running(c):
                    raise RuntimeError(f"the pod's {c} container stopped:\n{pod.logs(c)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the in-pod puller did not register in 240 s:\n{pod.logs('puller')}")
            time.sleep(1.0)
        cgroup = pod.cgroup_dir("mlserver")
        print(f"pod {pod.pod_id} registered; MLServer cgroup {cgroup}", flush=True)
        time.sleep(1.0)  # the servers' start-up allocations settle
        ws_start = working_set(cgroup)
        work: list[tuple[Case, int, int]] = [(c, i, c.disk_bytes()) for c in cases({"mlserver"}, labels) for i in range(copies)]
        s3 = stack.s3_client()  # type: ignore[no-untyped-call]
        for n in forests:
            blob = forest(n, seed=n)
            key = f"bench/pod-forest-{n}.joblib"
            s3.put_object(Bucket=EXAMPLE_BUCKET, Key=key, Body=blob)
            work.append((Case(f"forest{n}", "sklearn", key, "mlserver", "", "", ""), 0, len(blob)))
        for case, i, disk in work:
            loc = _register_and_load(stack, f"local-{case.slug()}-{i}", case, "mlserver-1.x")
            before = working_set(cgroup)
            inp = _register_and_load(stack, f"pod-{case.slug()}-{i}", case, IN_POD_RUNTIME)
            time.sleep(0.2)
            after = working_set(cgroup)
            rows.append(Row(f"{case.label}-{i}", case.format, disk, loc.size, inp.size,
                            inp.measured, after - before, loc.measured))
            print(f"  {case.label}-{i}: local {loc.size / 2**20:.1f} MiB, in-pod {inp.size / 2**20:.1f} MiB"
                  f"{'' if inp.measured else ' (reserved)'}, cgroup +{(after - before) / 2**20:.1f} MiB", flush=True)
        ws_end = working_set(cgroup)
    finally:
        if pod is not None:
            if keep:
                for c in ("mlserver", "puller"):
                    (root / f"pod-{c}.log").write_text(pod.logs(c))
            pod.stop()
        stack.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n(run took {time.monotonic() - started:.0f}s{f'; files under {root}' if keep else ''})\n")
    print(f"Sizes measured inside a Podman runtime pod (the controller's Deployment; bucket {EXAMPLE_BUCKET}),"
          " against the local pod of `make bench-sizes`:\n")
    print(table(rows))
    total = sum(r.in_pod for r in rows)
    print(f"\nMLServer container cgroup working set: {ws_start / 2**20:.1f} MiB after start-up, "
          f"{ws_end / 2**20:.1f} MiB after {len(rows)} copies (+{(ws_end - ws_start) / 2**20:.1f} MiB; "
          f"sum of in-pod sizes {total / 2**20:.1f} MiB)")
