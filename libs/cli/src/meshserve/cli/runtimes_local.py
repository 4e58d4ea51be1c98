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

Blocking work (process start/stop) runs in a thread so the reconcile loop keeps serving.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshserve.cli.devstack import PodHandle, Stack, StackConfig
from meshserve.controller.deployments import SPEC_HASH_ANNOTATION
from meshserve.controller.reconcile import ActionKind, DeploymentAction, ObservedDeployment

log = logging.getLogger(__name__)

PULLER_ENV_FROM_MANIFEST = (
    "MESHSERVE_PULLER_RUNTIME",
    "MESHSERVE_PULLER_SUPPORTED_FORMATS",
    "MESHSERVE_PULLER_PROTOCOL_VERSIONS",
    "MESHSERVE_PULLER_MAX_LOADING_CONCURRENCY",
    "MESHSERVE_PULLER_LOAD_TIMEOUT_SECONDS",
    "MESHSERVE_PULLER_CAPACITY_BYTES",
)


@dataclass
class LocalDeployment:
    name: str
    spec_hash: str = ""
    runnable: bool = True
    env: dict[str, str] = field(default_factory=dict)
    pods: list[PodHandle] = field(default_factory=list)
    replicas: int = 0
    seq: int = 0


def puller_env(manifest: dict[str, Any]) -> tuple[bool, dict[str, str]]:
    """(runs as a local process?, the puller variables taken from a planned Deployment manifest)."""
    containers = manifest.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []) or []
    runnable = any(c.get("name") == "mlserver" for c in containers)
    env: dict[str, str] = {}
    for c in containers:
        if c.get("name") != "puller":
            continue
        for var in c.get("env") or []:
            value = var.get("value")
            if var.get("name") in PULLER_ENV_FROM_MANIFEST and isinstance(value, str) and "$(" not in value:
                env[var["name"]] = value
    return runnable, env


class ProcessRuntimes:
    """RuntimeBackend (see `meshserve.controller.worker.RuntimeBackend`) over local processes."""

    def __init__(self, settings: Any) -> None:
        root = settings.local_root.resolve()
        self.stack = Stack(StackConfig(root=root))
        self.stack.redis_url = os.environ.get("MESHSERVE_REDIS_URL", "")
        self.stack.database_url = os.environ.get("MESHSERVE_DATABASE_URL", "")
        self.stack.s3_endpoint = os.environ.get("MESHSERVE_S3_ENDPOINT", "")
        self.stack.key_prefix = os.environ.get("MESHSERVE_SCHEDULER_KEY_PREFIX", self.stack.key_prefix)
        self.stack.scheduler_grpc = settings.scheduler_address
        self.capacity = int(settings.local_pod_capacity_bytes or 0)
        self.deployments: dict[str, LocalDeployment] = {}
        # pod folders are pods/pod-<index>: unique per controller process, so a restart never reuses one
        self._index = itertools.count((os.getpid() % 100_000) * 1000)
        self._lock = asyncio.Lock()

    # --- RuntimeBackend ------------------------------------------------------------------------

    def observed(self) -> dict[str, ObservedDeployment]:
        return {
            d.name: ObservedDeployment(name=d.name, replicas=d.replicas, spec_hash=d.spec_hash)
            for d in self.deployments.values()
        }

    async def apply(self, action: DeploymentAction, *, namespace: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self._apply, action)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._stop_everything)

    # --- blocking work (in a thread) -----------------------------------------------------------

    def _apply(self, action: DeploymentAction) -> None:
        if action.kind is ActionKind.DELETE:
            dep = self.deployments.pop(action.name, None)
            if dep is not None:
                self._scale(dep, 0)
            return
        dep = self.deployments.setdefault(action.name, LocalDeployment(name=action.name))
        if action.manifest is not None:
            new_hash = str(action.manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION])
            runnable, env = puller_env(dict(action.manifest))
            if dep.spec_hash and new_hash != dep.spec_hash and dep.pods:
                log.info("runtime %s changed: restarting its %d local pod(s)", action.name, len(dep.pods))
                self._scale(dep, 0)
            dep.spec_hash, dep.runnable, dep.env = new_hash, runnable, env
        self._scale(dep, action.replicas)

    def _scale(self, dep: LocalDeployment, replicas: int) -> None:
        dep.replicas = replicas
        if not dep.runnable and replicas > 0:
            log.warning("runtime %s is not an MLServer runtime: local mode cannot run its pods", dep.name)
            return
        while len(dep.pods) > replicas:
            self._stop_pod(dep.pods.pop())
        while len(dep.pods) < replicas:
            dep.pods.append(self._start_pod(dep))

    def _start_pod(self, dep: LocalDeployment) -> PodHandle:
        pod_id = f"{dep.name}-{dep.seq}"
        dep.seq += 1
        env = {**dep.env, "MESHSERVE_PULLER_POD_ID": pod_id}
        if self.capacity:
            env["MESHSERVE_PULLER_CAPACITY_BYTES"] = str(self.capacity)
        handle = self.stack.start_pod(next(self._index), env=env)
        handle.pod_id = pod_id
        log.info("started local runtime pod %s (MLServer %s, puller %s)", pod_id, handle.mlserver_grpc, handle.puller_address)
        return handle

    def _stop_pod(self, handle: PodHandle) -> None:
        for proc in (handle.puller, handle.mlserver):
            self.stack.group.stop(proc)  # type: ignore[arg-type]
        if handle in self.stack.pods:
            self.stack.pods.remove(handle)
        pod_dir = self._pod_dir(handle)
        if pod_dir is not None:
            shutil.rmtree(pod_dir, ignore_errors=True)   # its model files; the logs stay under logs/
        log.info("stopped local runtime pod %s", handle.pod_id)

    def _pod_dir(self, handle: PodHandle) -> Path | None:
        # Stack.start_pod names the folder after the mlserver process: "<pod-N>-mlserver"
        name = getattr(handle.mlserver, "name", "")
        if not name.endswith("-mlserver"):
            return None
        return self.stack.root / "pods" / name.removesuffix("-mlserver")

    def _stop_everything(self) -> None:
        for dep in list(self.deployments.values()):
            self._scale(dep, 0)
        self.deployments.clear()

