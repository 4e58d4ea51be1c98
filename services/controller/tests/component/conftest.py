"""Fixtures for the controller's Kubernetes-layer component tests.

* `fakekube`: the wire-level fake API server (`tests/fakekube/server.py`) as a REAL separate
  process on 127.0.0.1:<free port>, with a state file so it can be killed and restarted on the
  same port; a kubeconfig pointing at it whose token is the controller's ServiceAccount. The fake
  serves the CRDs of `deploy/kustomize/base` (schemas enforced) and authorizes that token with the
  RBAC of the same kustomization. The fixture fails the test (at teardown) if any request of the
  controller was refused by RBAC (403) or had fields pruned by a CRD schema: either would break
  on a real cluster. The harness itself (`FakeKube.request`) sends no token: a cluster admin.
* `scheduler`: a grpc.aio server on port 0 implementing the scheduler's SetVModel /
  GetVModelStatus / DeleteVModel / RegisterModel. It is a test double of the *scheduler's gRPC
  API* (the real scheduler needs Redis and Postgres; the whole stack is tested in
  tests/integration), never of the controller's own code.
* `controller`: the controller's Kubernetes layer (`Reconciler`) in-process, with the real
  kubernetes-asyncio client and the real `GrpcScheduler`.

Synchronisation is always `eventually(...)` polling against a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import pytest
import yaml

from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as pbg
from meshserve.controller.events import KubeEventRecorder
from meshserve.controller.finalizers import FINALIZER
from meshserve.controller.kube import KubeApi, api_client_from
from meshserve.controller.scheduler_client import GrpcScheduler
from meshserve.controller.worker import Reconciler

SERVER = Path(__file__).resolve().parents[1] / "fakekube" / "server.py"
KUSTOMIZATION = Path(__file__).resolve().parents[4] / "deploy" / "kustomize" / "base"
NAMESPACE = "modelmesh-serving"
CONTROLLER_TOKEN = "test-token"
CONTROLLER_USER = f"system:serviceaccount:{NAMESPACE}:meshserve-controller"
"""The identity the ClusterRoleBinding of deploy/kustomize binds the controller's ClusterRole to."""
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Awaitable[T | None]], *, within: float = 10.0, what: str = "") -> T:
    """Poll `check` until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = await check()
        except Exception as err:   # server restarting, object not there yet
            last = err
        else:
            if result:
                return result
            last = result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what or check}: last={last!r}")


@dataclass
class FakeKube:
    port: int
    state: Path
    log: Path
    kubeconfig: Path
    proc: asyncio.subprocess.Process | None = None
    http: aiohttp.ClientSession = field(default_factory=aiohttp.ClientSession)
    bookmark_interval: float = 60.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SERVER), "--port", str(self.port), "--state", str(self.state),
                "--kustomization", str(KUSTOMIZATION), "--token", f"{CONTROLLER_TOKEN}={CONTROLLER_USER}",
                "--bookmark-interval", str(self.bookmark_interval),
                stdout=out, stderr=asyncio.subprocess.STDOUT,
            )

        async def up() -> bool:
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"fake API server exited: {self.log.read_text()[-2000:]}")
            async with self.http.get(f"{self.url}/version") as r:
                return r.status == 200
        await eventually(up, within=30, what="fake API server /version")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        async with self.http.request(method, self.url + path, json=body, headers={"Content-Type": content_type}) as r:
            payload = await r.json()
            if r.status >= 300:
                raise AssertionError(f"{method} {path}: {r.status} {payload}")
            return payload

    async def apply(self, plural_path: str, obj: dict[str, Any]) -> Any:
        return await self.request("POST", plural_path, obj)

    async def events(self, *, kind: str, name: str, reason: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        """core/v1 Events in `namespace` about the object `kind`/`name` with `reason`."""
        listed = await self.get(f"/api/v1/namespaces/{namespace}/events")
        return [
            e for e in (listed or {}).get("items") or []
            if e.get("reason") == reason and e["involvedObject"].get("kind") == kind and e["involvedObject"].get("name") == name
        ]

    async def get(self, path: str) -> Any:
        async with self.http.get(self.url + path) as r:
            return await r.json() if r.status == 200 else None

    async def problems(self) -> list[dict[str, Any]]:
        """Requests RBAC refused and writes whose fields a CRD schema pruned (any authenticated user)."""
        denied = await self.get("/_control/denied") or []
        pruned = await self.get("/_control/pruned") or []
        return [*denied, *pruned]


async def fakekube_at(tmp_path: Path, *, bookmark_interval: float = 60.0) -> FakeKube:
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "fake", "user": {"token": CONTROLLER_TOKEN}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
    }))
    kube = FakeKube(port=port, state=tmp_path / "etcd.json", log=tmp_path / "fakekube.log", kubeconfig=kubeconfig,
                    bookmark_interval=bookmark_interval)
    await kube.start()
    return kube


@contextlib.asynccontextmanager
async def checked(kube: FakeKube) -> AsyncIterator[FakeKube]:
    """Yield `kube`; on exit fail if the controller met a 403 or lost fields to pruning, then stop it."""
    try:
        yield kube
        if kube.proc is not None and kube.proc.returncode is None:
            problems = await kube.problems()
            assert not problems, f"requests a real API server would refuse or prune: {problems}"
    finally:
        await kube.kill()
        await kube.http.close()


@pytest.fixture
async def fakekube(tmp_path: Path) -> AsyncIterator[FakeKube]:
    async with checked(await fakekube_at(tmp_path)) as kube:
        yield kube


class SchedulerDouble(pbg.SchedulerServicer):
    """The scheduler's gRPC API, answering every registered vmodel as Loaded on one copy."""

    def __init__(self) -> None:
        self.set_requests: list[pb.SetVModelRequest] = []
        self.deleted: list[tuple[str, str]] = []
        self.vmodels: dict[str, pb.SetVModelRequest] = {}

    def _info(self, req: pb.SetVModelRequest) -> pb.VModelStatusInfo:
        copy = pb.CopyInfo(location="runtime-pod-a", copy_status=pb.LOADED, time_ms=int(time.time() * 1000))
        status = pb.ModelStatusInfo(status=pb.LOADED, copies=[copy])
        return pb.VModelStatusInfo(status=pb.DEFINED, active_model_id=req.target_model_id,
                                   target_model_id=req.target_model_id, active_model_status=status, owner=req.owner)

    async def RegisterModel(self, request: pb.RegisterModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatusInfo:
        return pb.ModelStatusInfo(status=pb.NOT_LOADED)

    async def SetVModel(self, request: pb.SetVModelRequest, context: grpc.aio.ServicerContext) -> pb.VModelStatusInfo:
        self.set_requests.append(request)
        known = self.vmodels.get(request.vmodel_id)
        if known is not None and known.owner != request.owner:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "vmodel owned by another source")
        self.vmodels[request.vmodel_id] = request
        return self._info(request)

    async def GetVModelStatus(self, request: pb.GetVModelStatusRequest, context: grpc.aio.ServicerContext) -> pb.VModelStatusInfo:
        known = self.vmodels.get(request.vmodel_id)
        return self._info(known) if known is not None else pb.VModelStatusInfo(status=pb.VMODEL_NOT_FOUND)

    async def DeleteVModel(self, request: pb.DeleteVModelRequest, context: grpc.aio.ServicerContext) -> pb.DeleteVModelResponse:
        self.deleted.append((request.vmodel_id, request.owner))
        if self.vmodels.pop(request.vmodel_id, None) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "vmodel not found")
        return pb.DeleteVModelResponse()


@dataclass
class SchedulerFixture:
    servicer: SchedulerDouble
    address: str


@pytest.fixture
async def scheduler() -> AsyncIterator[SchedulerFixture]:
    servicer = SchedulerDouble()
    server = grpc.aio.server()
    pbg.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield SchedulerFixture(servicer, f"127.0.0.1:{port}")
    finally:
        await server.stop(grace=None)


@dataclass
class Running:
    reconciler: Reconciler
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_controller(fakekube: FakeKube, scheduler: SchedulerFixture, **options: Any) -> AsyncIterator[Running]:
    """One controller run (as in Kubernetes mode: with its finalizer); stopped on exit, so a test
    can take the controller down and bring it back. `options`: more `Reconciler` arguments."""
    api_client = await api_client_from(str(fakekube.kubeconfig))
    channel = grpc.aio.insecure_channel(scheduler.address)
    api = KubeApi(api_client, request_timeout=5)
    reconciler = Reconciler(
        api=api, scheduler=GrpcScheduler(channel, timeout=5),
        namespace=NAMESPACE, config_map_name="model-serving-config", scheduler_address=scheduler.address,
        watch_timeout_seconds=30,
        # every repeat is written (no coalescing window), so tests can watch `count` grow
        events=KubeEventRecorder(api, namespace=NAMESPACE, repeat_interval=0, instance="test"),
        finalizer=FINALIZER, **options,
    )
    task = asyncio.create_task(reconciler.run(), name="reconciler")
    try:
        yield Running(reconciler, task)
    finally:
        reconciler.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.close()
        await api_client.close()


@pytest.fixture
async def controller(fakekube: FakeKube, scheduler: SchedulerFixture) -> AsyncIterator[Running]:
    async with running_controller(fakekube, scheduler) as running:
        yield running
