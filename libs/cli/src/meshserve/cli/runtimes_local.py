"""Runtime pods as local processes: the controller's runtime backend in local mode.

Where Kubernetes mode creates a Deployment `<inferenceServiceName>-<runtime>` with `replicas`
pods, this starts that many local pods (one MLServer + one puller each, built exactly as the
local stack builds them: `meshserve.cli.devstack.Stack.start_pod`) and stops them when the plan
scales the runtime to zero (scale-to-zero after `gracePeriodSeconds`) or deletes it. The puller
of each pod gets the runtime's identity from the Deployment manifest the controller planned
(`MESHSERVE_PULLER_RUNTIME`, `_SUPPORTED_FORMATS`, `_PROTOCOL_VERSIONS`, ...), so the scheduler
sees the same labels as in a cluster.

Loaded by name from `python -m meshserve.controller` (`MESHSERVE_CONTROLLER_LOCAL_PROVIDER`);
it reads the stack's connection settings from the controller's environment
(`MESHSERVE_REDIS_URL`, `MESHSERVE_DATABASE_URL`, `MESHSERVE_S3_ENDPOINT`,
`MESHSERVE_SCHEDULER_KEY_PREFIX`) and `MESHSERVE_CONTROLLER_LOCAL_ROOT` (pod folders, logs and the
`storage-config/` folder of the local stack).

Only MLServer runtimes (a container named `mlserver`) can run as local processes; for any other
runtime nothing is started and a warning is logged (its models then wait for a runtime, as in a
cluster whose pods never become ready).

The pods are started and stopped by a small single-threaded supervisor process (`PodSupervisor`,
see there why); the controller talks to it over a pipe from a worker thread so the reconcile loop
keeps serving.

Restarts, as a Deployment's pods with `restartPolicy: Always`: when the model server or the
puller of a pod exits or is killed, the supervisor stops the other process of that pod (a
puller stopped with SIGTERM tells the scheduler the pod is leaving) and, after the back-off of
`restarts.POD_POLICY`, starts a replacement pod under the SAME pod id (fresh folder and ports:
the scheduler learns the addresses from the new puller's first report). The whole pod restarts,
not just the dead process: a new puller purges its model server anyway, and a model server
restarted under a living puller would leave the puller and the scheduler believing in copies
it no longer has. Each pod's restart count, last exit and process ids are written to the
`meshserve-local-pods` ConfigMap of the resource store (`resources.LOCAL_PODS_CONFIGMAP`), which
`meshserve get pods` shows as RESTARTS.

The storage-config Secret applied with `meshserve apply` reaches the pods as the kubelet's
Secret volume does: `ProcessRuntimes` runs a `meshserve.controller.local.StorageSecretSync`
that keeps `<local root>/storage-config/` (the pullers' MESHSERVE_PULLER_STORAGE_CONFIG_DIR)
equal to the Secret's keys, file by file, atomically; a running puller reads the key files at
every load, so a new or changed key works without restarting anything. The first pod starts
only after the first sync (bounded wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import logging
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from meshserve.cli.devstack import PodHandle, Stack, StackConfig
from meshserve.cli.procs import Proc
from meshserve.cli.resources import local_pods_document
from meshserve.cli.restarts import (
    POD_POLICY,
    RestartHistory,
    RestartPolicy,
    decide_restart,
    describe_exit,
)
from meshserve.controller.deployments import LOCAL_COMMAND_ANNOTATION, SPEC_HASH_ANNOTATION
from meshserve.controller.local import LocalResourceApi, StorageConfigFiles, StorageSecretSync
from meshserve.controller.reconcile import ActionKind, DeploymentAction, ObservedDeployment

log = logging.getLogger(__name__)

PULLER_ENV_FROM_MANIFEST = (
    "MESHSERVE_PULLER_RUNTIME",
    "MESHSERVE_PULLER_SUPPORTED_FORMATS",
    "MESHSERVE_PULLER_PROTOCOL_VERSIONS",
    "MESHSERVE_PULLER_MAX_LOADING_CONCURRENCY",
    "MESHSERVE_PULLER_LOAD_TIMEOUT_SECONDS",
    "MESHSERVE_PULLER_CAPACITY_BYTES",
    "MESHSERVE_PULLER_DEFAULT_MODEL_SIZE_BYTES",
    "MESHSERVE_PULLER_MODEL_SERVER_KIND",
    "MESHSERVE_PULLER_STORAGE_HELPER_DISABLED",
    "MESHSERVE_PULLER_TRITON_PRESTART_FORMATS",
)
CHECKOUT = Path(__file__).resolve().parents[5]  # libs/cli/src/meshserve/cli/ -> the checkout (editable install)
LOCAL_COMMAND_ENV = "MESHSERVE_LOCAL_COMMAND"  # carries the runtime's local command to the supervisor
RUNTIME_ENV_PREFIX = "MESHSERVE_LOCAL_RUNTIME_ENV__"  # the runtime container's own env values
LOCAL_SERVERS = ("mlserver", "triton", "ovms")  # containers local mode can run as processes (ovms: the stand-in)
ADMIN_TOKEN_ENV = "MESHSERVE_LOCAL_SUPERVISOR_ADMIN_TOKEN"  # the admin token reaches the supervisor here, not in argv
TICK_SECONDS = 0.5  # how often the supervisor looks at its pods between commands
PUBLISH_RETRY_SECONDS = 5.0


@dataclass
class LocalPod:
    """One pod of a local Deployment across its restarts (the pod id stays, the processes change)."""

    pod_id: str
    handle: PodHandle | None = None
    started_at: float = 0.0
    restarts: int = 0
    history: RestartHistory = field(default_factory=RestartHistory)
    restart_at: float | None = None
    """Set while the pod is down, waiting for its back-off."""
    last_exit: str = ""
    last_restart: str = ""
    logs: dict[str, str] = field(default_factory=dict)
    """Container -> log file of the latest processes (kept while the pod waits for its restart)."""

    def status(self, deployment: str) -> dict[str, Any]:
        pids: dict[str, int] = {}
        logs: dict[str, str] = {}
        if self.handle is not None:
            for proc in (self.handle.mlserver, self.handle.puller):
                if isinstance(proc, Proc):
                    pids[_container(proc)] = proc.popen.pid
                    logs[_container(proc)] = str(proc.log_path)   # what `meshserve logs <pod>` reads
            self.logs = logs
        return {
            "deployment": deployment, "restarts": self.restarts, "lastRestart": self.last_restart or None,
            "lastExit": self.last_exit or None, "pids": pids, "logs": logs or self.logs, "waiting": self.restart_at is not None,
        }


def _container(proc: Proc) -> str:
    """`mlserver`, `triton`, `ovms`, `runtime` or `puller`: the part of the process name after the pod folder."""
    return proc.name.rsplit("-", 1)[-1]


@dataclass
class LocalDeployment:
    name: str
    spec_hash: str = ""
    runnable: bool = True
    env: dict[str, str] = field(default_factory=dict)
    pods: list[LocalPod] = field(default_factory=list)
    replicas: int = 0
    seq: int = 0


def puller_env(manifest: dict[str, Any]) -> tuple[bool, dict[str, str]]:
    """(runs as a local process?, the puller variables taken from a planned Deployment manifest)."""
    template = manifest.get("spec", {}).get("template", {})
    containers = template.get("spec", {}).get("containers", []) or []
    local_command = (template.get("metadata", {}).get("annotations") or {}).get(LOCAL_COMMAND_ANNOTATION, "")
    runnable = any(c.get("name") in LOCAL_SERVERS for c in containers) or bool(local_command)
    env: dict[str, str] = {}
    if local_command:
        # a custom (SPI) runtime: its container cannot run here, the annotation says what can
        env[LOCAL_COMMAND_ENV] = local_command
        for c in containers:
            if c.get("name") != "puller":
                for var in c.get("env") or []:
                    if isinstance(var.get("value"), str):
                        env[RUNTIME_ENV_PREFIX + var["name"]] = var["value"]
                break
    for c in containers:
        if c.get("name") != "puller":
            continue
        for var in c.get("env") or []:
            value = var.get("value")
            if var.get("name") in PULLER_ENV_FROM_MANIFEST and isinstance(value, str) and "$(" not in value:
                env[var["name"]] = value
    return runnable, env


class PodSupervisor:
    """Runs in its own single-threaded process (`python -m meshserve.cli.runtimes_local`): starts,
    stops and restarts the pods. Forking model servers from the controller itself is unsafe: its
    gRPC and worker threads may hold locks at fork time, and `ProcessGroup`'s pre-exec hook
    (PR_SET_PDEATHSIG via ctypes) can then deadlock the child before exec. The supervisor is
    started without a pre-exec hook, reads one JSON command per line on stdin, answers one JSON
    line on stdout, looks at its pods every `TICK_SECONDS` in between (restarts: see the module
    docstring), and stops every pod when stdin closes (the controller exited)."""

    def __init__(
        self, *, root: Path, scheduler_address: str, capacity: int, admin_url: str = "", namespace: str = "default",
        admin_token: str | None = None, policy: RestartPolicy = POD_POLICY,
        clock: Callable[[], float] = time.monotonic, rand: Callable[[], float] = random.random,
    ) -> None:
        self.stack = Stack(StackConfig(root=root))
        self.stack.redis_url = os.environ.get("MESHSERVE_REDIS_URL", "")
        self.stack.database_url = os.environ.get("MESHSERVE_DATABASE_URL", "")
        self.stack.s3_endpoint = os.environ.get("MESHSERVE_S3_ENDPOINT", "")
        self.stack.key_prefix = os.environ.get("MESHSERVE_SCHEDULER_KEY_PREFIX", self.stack.key_prefix)
        self.stack.scheduler_grpc = scheduler_address
        self.capacity = capacity
        self.deployments: dict[str, LocalDeployment] = {}
        # pod folders are pods/pod-<index>: unique per supervisor process, so a restart never reuses one
        self._index = itertools.count((os.getpid() % 100_000) * 1000)
        self.admin_url, self.namespace, self._token = admin_url.rstrip("/"), namespace, admin_token
        self.policy, self.clock, self.rand = policy, clock, rand
        self._dirty = True          # the first publish replaces what an earlier supervisor left
        self._publish_after = 0.0

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        name = str(command["name"])
        if command["op"] == "delete":
            dep = self.deployments.pop(name, None)
            if dep is not None:
                self._scale(dep, 0)
            return {"ok": True}
        dep = self.deployments.setdefault(name, LocalDeployment(name=name))
        if command.get("spec_hash") is not None:
            if dep.spec_hash and command["spec_hash"] != dep.spec_hash and dep.pods:
                log.info("runtime %s changed: restarting its %d local pod(s)", name, len(dep.pods))
                self._scale(dep, 0)
            dep.spec_hash, dep.runnable, dep.env = str(command["spec_hash"]), bool(command["runnable"]), dict(command["env"])
        self._scale(dep, int(command["replicas"]))
        return {"ok": True, "pods": [p.pod_id for p in dep.pods]}

    def serve(self, stdin: Any, stdout: Any) -> None:
        fd = stdin.fileno()
        pending = b""
        try:
            while True:
                readable, _, _ = select.select([fd], [], [], TICK_SECONDS)
                if readable:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break   # EOF: the controller is gone
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        if line.strip():
                            stdout.write(json.dumps(self._answer(line)) + "\n")
                            stdout.flush()
                self.tick()
        finally:
            # EOF and the death signal (SIGTERM) both come when the controller dies: the second
            # must not cut this stop short
            with contextlib.suppress(ValueError):   # not the main thread (tests)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            for dep in list(self.deployments.values()):
                self._scale(dep, 0)
            self.stack.stop()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            return self.handle(json.loads(line))
        except Exception as err:
            log.exception("command failed")
            return {"ok": False, "error": f"{type(err).__name__}: {err}"}

    # -- restarts ---------------------------------------------------------------------------------
    def tick(self) -> None:
        """Notice pods whose processes died, start the replacements that are due, publish."""
        for dep in list(self.deployments.values()):
            for pod in list(dep.pods):
                now = self.clock()
                if pod.restart_at is None and pod.handle is not None:
                    dead = [p for p in (pod.handle.mlserver, pod.handle.puller) if isinstance(p, Proc) and not p.alive]
                    if dead:
                        why = ", ".join(f"{_container(p)} {describe_exit(p.popen.returncode)}" for p in dead)
                        self._stop_pod(pod, why=why)
                        self._schedule_restart(dep, pod, why, now)
                elif pod.restart_at is not None and now >= pod.restart_at:
                    self._restart(dep, pod)
        self._publish()

    def _schedule_restart(self, dep: LocalDeployment, pod: LocalPod, why: str, now: float) -> None:
        pod.history, decision = decide_restart(
            pod.history, now=now, ran_for=now - pod.started_at, policy=self.policy, rand=self.rand()
        )
        delay = getattr(decision, "delay", self.policy.max_delay)   # POD_POLICY never gives up
        pod.last_exit, pod.restart_at, self._dirty = why, now + delay, True
        log.warning("runtime pod %s of %s: %s; restarting it in %.1fs (restart %d)",
                    pod.pod_id, dep.name, why, delay, pod.restarts + 1)

    def _restart(self, dep: LocalDeployment, pod: LocalPod) -> None:
        pod.restart_at = None
        pod.restarts += 1
        pod.last_restart = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self._dirty = True
        try:
            pod.handle = self._start_pod(dep, pod.pod_id)
        except Exception as err:
            log.exception("restarting runtime pod %s failed", pod.pod_id)
            self._schedule_restart(dep, pod, f"did not start ({type(err).__name__}: {err})", self.clock())
            return
        pod.started_at = self.clock()
        log.info("runtime pod %s restarted (restart %d)", pod.pod_id, pod.restarts)

    def _publish(self) -> None:
        """Best-effort: the pods' status into the resource store; retried later when it fails."""
        now = self.clock()
        if not self._dirty or not self.admin_url or now < self._publish_after:
            return
        pods = {p.pod_id: p.status(dep.name) for dep in self.deployments.values() for p in dep.pods}
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            response = httpx.post(f"{self.admin_url}/v1/resources", json=local_pods_document(self.namespace, pods),
                                  headers=headers, timeout=3.0)
            ok = response.status_code < 300
            if not ok:
                log.warning("pod status not written: %s %s", response.status_code, response.text[:200])
        except httpx.HTTPError as err:
            ok = False
            log.warning("pod status not written: %s", err)
        if ok:
            self._dirty = False
        else:
            self._publish_after = now + PUBLISH_RETRY_SECONDS

    # -- scaling ----------------------------------------------------------------------------------
    def _scale(self, dep: LocalDeployment, replicas: int) -> None:
        dep.replicas = replicas
        if not dep.runnable and replicas > 0:
            log.warning("runtime %s is not an MLServer, Triton or OVMS runtime and has no %s annotation: local mode cannot run its pods", dep.name, LOCAL_COMMAND_ANNOTATION)
            return
        while len(dep.pods) > replicas:
            self._stop_pod(dep.pods.pop())
            self._dirty = True
        while len(dep.pods) < replicas:
            pod = LocalPod(pod_id=f"{dep.name}-{dep.seq}")
            dep.seq += 1
            pod.handle, pod.started_at = self._start_pod(dep, pod.pod_id), self.clock()
            dep.pods.append(pod)
            self._dirty = True

    def _start_pod(self, dep: LocalDeployment, pod_id: str) -> PodHandle:
        env = {**dep.env, "MESHSERVE_PULLER_POD_ID": pod_id}
        if self.capacity:
            env["MESHSERVE_PULLER_CAPACITY_BYTES"] = str(self.capacity)
        if env.get("MESHSERVE_PULLER_MODEL_SERVER_KIND") == "triton":
            handle = self.stack.start_triton_pod(env=env, pod_id=f"triton-{next(self._index)}")
        elif env.get("MESHSERVE_PULLER_MODEL_SERVER_KIND") == "ovms":
            handle = self.stack.start_ovms_pod(env=env, pod_id=f"ovms-{next(self._index)}")
        elif env.get("MESHSERVE_PULLER_MODEL_SERVER_KIND") == "spi" and LOCAL_COMMAND_ENV in env:
            handle = self._start_spi_pod(env)
        else:
            handle = self.stack.start_pod(next(self._index), env=env)
        handle.pod_id = pod_id
        log.info("started local runtime pod %s (model server %s, puller %s)", pod_id, handle.mlserver_grpc, handle.puller_address)
        return handle

    def _start_spi_pod(self, env: dict[str, str]) -> PodHandle:
        """A custom runtime serving ModelMesh's SPI, run from its `meshserve.io/local-command`
        annotation: a JSON list of arguments with Stack.start_spi_pod's placeholders, plus
        `{python}` (this environment's interpreter) and `{checkout}` (meshserve's folder)."""
        try:
            command = json.loads(env.pop(LOCAL_COMMAND_ENV))
        except ValueError as err:
            raise ValueError(f"{LOCAL_COMMAND_ANNOTATION} must be a JSON list of strings: {err}") from err
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise ValueError(f"{LOCAL_COMMAND_ANNOTATION} must be a non-empty JSON list of strings")
        fixed = {"python": sys.executable, "checkout": str(CHECKOUT)}
        command = [a.replace("{python}", fixed["python"]).replace("{checkout}", fixed["checkout"]) for a in command]
        runtime_env = {k.removeprefix(RUNTIME_ENV_PREFIX): env.pop(k) for k in list(env) if k.startswith(RUNTIME_ENV_PREFIX)}
        return self.stack.start_spi_pod(
            command, runtime=env.get("MESHSERVE_PULLER_RUNTIME", ""), formats=env.get("MESHSERVE_PULLER_SUPPORTED_FORMATS", ""),
            pod_id=f"spi-{next(self._index)}", env=env, runtime_env=runtime_env, wait=False,
        )

    def _stop_pod(self, pod: LocalPod, *, why: str = "") -> None:
        handle, pod.handle = pod.handle, None
        if handle is None:
            return   # down already, waiting for its restart
        for proc in (handle.puller, handle.mlserver):   # the puller first: it says goodbye to the scheduler
            self.stack.group.stop(proc)  # type: ignore[arg-type]
        if handle in self.stack.pods:
            self.stack.pods.remove(handle)
        pod_dir = self._pod_dir(handle)
        if pod_dir is not None:
            shutil.rmtree(pod_dir, ignore_errors=True)   # its model files; the logs stay under logs/
        log.info("stopped local runtime pod %s%s", pod.pod_id, f" ({why})" if why else "")

    def _pod_dir(self, handle: PodHandle) -> Path | None:
        # Stack.start_pod names the folder like the mlserver process, minus "-mlserver"
        name = getattr(handle.mlserver, "name", "")
        for suffix in ("-mlserver", "-triton", "-ovms", "-runtime"):
            if name.endswith(suffix):
                return self.stack.root / "pods" / name.removesuffix(suffix)
        return None


class ProcessRuntimes:
    """RuntimeBackend (see `meshserve.controller.worker.RuntimeBackend`) over local processes,
    run by a `PodSupervisor` child process (see there for why)."""

    def __init__(self, settings: Any) -> None:
        self.root = Path(settings.local_root).resolve()
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        config = {
            "root": str(self.root), "scheduler_address": settings.scheduler_address,
            "capacity": int(settings.local_pod_capacity_bytes or 0),
            "admin_url": str(getattr(settings, "admin_url", "") or ""), "namespace": str(getattr(settings, "namespace", "default")),
        }
        env = dict(os.environ)
        token = getattr(settings, "admin_token", None)
        if token is not None:
            env[ADMIN_TOKEN_ENV] = token.get_secret_value()
        self._log = open(self.root / "logs" / "runtime-supervisor.log", "ab")
        self._proc = subprocess.Popen(  # no preexec_fn: safe from a threaded parent
            [sys.executable, "-m", "meshserve.cli.runtimes_local", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1, env=env,
        )
        self.deployments: dict[str, ObservedDeployment] = {}
        self._lock = asyncio.Lock()
        self._secret_api: LocalResourceApi | None = None
        self._secret_sync: StorageSecretSync | None = None
        self._secret_task: asyncio.Task[None] | None = None
        admin_url = str(getattr(settings, "admin_url", "") or "")
        if admin_url:
            self._secret_api = LocalResourceApi(admin_url, token=token.get_secret_value() if token is not None else None)
            self._secret_sync = StorageSecretSync(
                self._secret_api, files=StorageConfigFiles(self.root / "storage-config"),
                namespace=config["namespace"], config_map_name=str(getattr(settings, "config_map_name", "model-serving-config")),
            )

    def observed(self) -> dict[str, ObservedDeployment]:
        return dict(self.deployments)

    async def _storage_config_synced(self) -> None:
        """Start the storage-config sync (on the controller's loop) and wait, at most
        SECRET_SYNC_WAIT_SECONDS, for its first listing: a pod started now sees the keys."""
        if self._secret_sync is None:
            return
        if self._secret_task is None:
            self._secret_task = asyncio.get_running_loop().create_task(self._secret_sync.run(), name="storage-config-sync")
            self._secret_task.add_done_callback(_log_death)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SECRET_SYNC_WAIT_SECONDS):
                await self._secret_sync.synced.wait()

    async def apply(self, action: DeploymentAction, *, namespace: str) -> None:
        await self._storage_config_synced()
        async with self._lock:
            if action.kind is ActionKind.DELETE:
                await asyncio.to_thread(self._call, {"op": "delete", "name": action.name})
                self.deployments.pop(action.name, None)
                return
            command: dict[str, Any] = {"op": "scale", "name": action.name, "replicas": action.replicas}
            current = self.deployments.get(action.name)
            spec_hash = current.spec_hash if current is not None else ""
            if action.manifest is not None:
                spec_hash = str(action.manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION])
                runnable, env = puller_env(dict(action.manifest))
                command.update(spec_hash=spec_hash, runnable=runnable, env=env)
            await asyncio.to_thread(self._call, command)
            self.deployments[action.name] = ObservedDeployment(name=action.name, replicas=action.replicas, spec_hash=spec_hash)

    def _call(self, command: dict[str, Any]) -> dict[str, Any]:
        if self._proc.poll() is not None or self._proc.stdin is None or self._proc.stdout is None:
            raise RuntimeError(f"the runtime pod supervisor exited (code {self._proc.returncode}); see {self.root}/logs")
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the runtime pod supervisor closed its output")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"runtime pod supervisor: {reply.get('error')}")
        return reply

    async def close(self) -> None:
        if self._secret_task is not None:
            self._secret_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._secret_task
        if self._secret_api is not None:
            await self._secret_api.close()
        async with self._lock:
            await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()   # EOF: the supervisor stops every pod and exits
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._log.close()


SECRET_SYNC_WAIT_SECONDS = 10.0


def _log_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the storage-config sync stopped: %r", task.exception())


def _exit_on_signal(*_: Any) -> None:
    raise SystemExit(0)   # unwinds `serve`, whose `finally` stops every pod


def _main(argv: list[str]) -> int:
    from meshserve.common import logging as mlog

    replies = os.fdopen(os.dup(1), "w")   # the protocol owns the real stdout ...
    os.dup2(2, 1)                          # ... and anything printed goes to the log
    mlog.configure(service="runtime-supervisor", level="INFO", json=False)
    with contextlib.suppress(Exception):   # die with the controller even if it cannot close our stdin
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    config = json.loads(argv[0])
    supervisor = PodSupervisor(
        root=Path(config["root"]), scheduler_address=config["scheduler_address"], capacity=int(config["capacity"]),
        admin_url=str(config.get("admin_url") or ""), namespace=str(config.get("namespace") or "default"),
        admin_token=os.environ.pop(ADMIN_TOKEN_ENV, None) or None,
    )
    supervisor.serve(sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
