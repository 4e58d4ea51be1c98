"""A local stack for fault injection, shared by `make chaos` and tests/integration/test_chaos_*.py.

What `meshserve dev` runs, started the way the integration fixtures start it: private Redis,
Postgres and S3 (moto), the scheduler, the router (Envoy data path) and the controller in
local mode, with `meshserve dev`'s supervisor (`meshserve.cli.supervise`) in a thread, so a
killed Redis or router comes back as it would under `meshserve dev`. The runtime pods are
the controller's (`podsPerRuntime` pods of the MLServer runtime `mlserver-1.x`, scale to zero
off), so a killed pod process is restarted by the controller's pod supervisor.

The models: the example sklearn model (mnist-svm) copied under `chaos-NNN/` in S3 and applied
as one InferenceService each (the vmodel names clients call). Pod capacity is set through
the controller (`MESHSERVE_CONTROLLER_LOCAL_POD_CAPACITY_BYTES`) so that not all fit.

Reads (pod status, copies, routes) go through the public surfaces: the admin API, the
scheduler's WatchRoutes stream, each model server's v2 REST repository index, and the local
pods ConfigMap that `meshserve get pods` reads.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import yaml

from meshserve.cli import supervise
from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig
from meshserve.cli.main import main as cli
from meshserve.cli.resources import AdminClient, local_pod_status

from .load import INFER, payload

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "models"
RUNTIME_YAML = ROOT / "examples" / "isvc" / "mlserver-1.x-servingruntime.yaml"
RUNTIME = "mlserver-1.x"
MODEL_FILE = EXAMPLES / "sklearn" / "mnist-svm.joblib"
CORRUPT = "chaos-corrupt"

T = TypeVar("T")


def wait_for(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `check` until it returns something truthy (backing off to `interval`); return it."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, interval)


def model_name(i: int) -> str:
    return f"chaos-{i:03d}"


def isvc(name: str, path: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storage": {"key": "localMinIO", "path": path}}}},
    }


@dataclass
class ChaosConfig:
    root: Path
    models: int = 50
    pods: int = 3
    capacity_bytes: int = 40 << 20
    scheduler_env: dict[str, str] = field(default_factory=dict)


class ChaosStack:
    """The stack, its supervisor thread, and the reads the fault cases compare."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.names = [model_name(i) for i in range(config.models)]
        env = {"MESHSERVE_SCHEDULER_MIN_RESIDENCY_SECONDS": "0", **config.scheduler_env}
        self.stack = Stack(StackConfig(root=config.root, pods=0, extra_env=env))
        self.said: list[str] = []
        self.supervisor_failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.upload_hooks: list[Callable[[], None]] = []
        self.extra_schedulers: list[tuple[str, str]] = []   # (gRPC address, admin URL) of replicas started by a case

    # -- start / stop -------------------------------------------------------------------
    def start(self) -> ChaosStack:
        s = self.stack
        try:
            s.start_infra()
            s.migrate()
            s.start_scheduler()
            s.start_router()
            self.upload()
            s.start_controller(extra_env={"MESHSERVE_CONTROLLER_LOCAL_POD_CAPACITY_BYTES": str(self.config.capacity_bytes)})
            self._start_supervisor()
            config = {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-serving-config"},
                "data": {"config.yaml": f"podsPerRuntime: {self.config.pods}\nscaleToZero:\n  enabled: false\n"},
            }
            self.apply([config])
            self.apply_files(RUNTIME_YAML)
            for i in range(0, len(self.names), 25):   # bounded batches: one apply per request timeout
                self.apply([isvc(n, f"chaos/{n}/model.joblib") for n in self.names[i:i + 25]])
            wait_for(lambda: len(self.pods()) == self.config.pods, timeout=180, what=f"{self.config.pods} runtime pods registered")
            wait_for(lambda: len(self.registered()) == len(self.names), timeout=120, what="every model registered")
        except BaseException:
            self.stop()
            raise
        return self

    def upload(self) -> None:
        """The example models, and the sklearn model under each chaos name (again after an S3 restart)."""
        s = self.stack
        s.upload_examples(EXAMPLES)
        client = s.s3_client()
        body = MODEL_FILE.read_bytes()
        for name in self.names:
            client.put_object(Bucket=EXAMPLE_BUCKET, Key=f"chaos/{name}/model.joblib", Body=body)
        for hook in self.upload_hooks:
            hook()

    def _start_supervisor(self) -> None:
        sup = supervise.Supervisor(supervise.stack_units(self.stack, after_s3_restart=self.upload), notify=self.said.append)

        def run() -> None:
            try:
                sup.run(self._stop, interval=0.2)
            except BaseException as err:
                self.supervisor_failure = err

        self._thread = threading.Thread(target=run, name="chaos-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        self.stack.stop()

    # -- resources --------------------------------------------------------------------------
    def apply(self, docs: Iterable[dict[str, Any]]) -> None:
        path = self.config.root / f"apply-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump_all(list(docs)))
        try:
            self.apply_files(path)
        finally:
            path.unlink()

    def apply_files(self, *paths: Path, verb: str = "apply") -> None:
        out, err = io.StringIO(), io.StringIO()
        args = [verb]
        for p in paths:
            args += ["-f", str(p)]
        with redirect_stdout(out), redirect_stderr(err):
            rc = cli([*args, "--admin", self.stack.admin_url])
        if rc != 0:
            raise RuntimeError(f"meshserve {verb} failed ({rc}): {err.getvalue().strip()}")

    def delete(self, docs: Iterable[dict[str, Any]]) -> None:
        path = self.config.root / f"delete-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump_all(list(docs)))
        try:
            self.apply_files(path, verb="delete")
        finally:
            path.unlink()

    # -- reads --------------------------------------------------------------------------------
    def admin(self, path: str) -> Any:
        response = httpx.get(f"{self.stack.admin_url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def unload(self, names: Iterable[str]) -> list[str]:
        """Unload every copy of these vmodels' models (admin `:unload`), so their next request
        loads them again; the model ids unloaded."""
        ids = [mid for name, mid in self.registered().items() if name in set(names) and mid]
        for mid in ids:
            response = httpx.post(f"{self.stack.admin_url}/v1/models/{mid}:unload", timeout=60)
            response.raise_for_status()
        return ids

    def pods(self) -> list[dict[str, Any]]:
        """The runtime pods the scheduler knows (Redis), as /v1/pods lists them."""
        return [p for p in self.admin("/v1/pods")["items"] if p["runtime"] == RUNTIME]

    def pod_status(self) -> dict[str, dict[str, Any]]:
        """Pod id -> the controller's supervisor status (pids, restarts, lastExit)."""
        client = AdminClient(self.stack.admin_url)
        try:
            return local_pod_status(client, namespace="default")
        finally:
            client.close()

    def registered(self) -> dict[str, str]:
        """vmodel -> its active (or target) model id, for the vmodels of this stack."""
        items = self.admin("/v1/vmodels?limit=1000")["items"]
        return {v["id"]: (v.get("activeModelId") or v.get("targetModelId") or "") for v in items if v["id"].startswith("chaos-")}

    def models(self) -> list[dict[str, Any]]:
        return list(self.admin("/v1/models?limit=1000")["items"])

    def copies(self) -> dict[str, set[str]]:
        """Model id -> pods holding a loaded copy, as the scheduler says (Redis)."""
        return {m["id"]: {c["pod"] for c in m["copies"] if c["state"] == "loaded"} for m in self.models()}

    def routes(self) -> dict[str, set[tuple[str, str]]]:
        """The scheduler's route table as a router receives it: model id -> {(pod, grpc address)}."""
        from meshserve.common.proto.meshserve.v1 import scheduler_pb2, scheduler_pb2_grpc

        with grpc.insecure_channel(self.stack.scheduler_grpc) as channel:
            stream = scheduler_pb2_grpc.SchedulerStub(channel).WatchRoutes(
                scheduler_pb2.WatchRoutesRequest(router_id=f"chaos-check-{os.getpid()}"), timeout=30
            )
            try:
                first = next(iter(stream))
            finally:
                stream.cancel()
        if not first.snapshot:
            raise RuntimeError("WatchRoutes did not start with a snapshot")
        return {r.model_id: {(e.pod_id, e.grpc_address) for e in r.endpoints} for r in first.routes}

    def model_server_rest(self) -> dict[str, str]:
        """gRPC address of each local MLServer -> its REST URL (from the pod folders' settings.json)."""
        import json

        out = {}
        for settings in (self.config.root / "pods").glob("*/settings.json"):
            try:
                s = json.loads(settings.read_text())
            except (OSError, ValueError):
                continue
            out[f"127.0.0.1:{s['grpc_port']}"] = f"http://127.0.0.1:{s['http_port']}"
        return out

    def held_by_model_servers(self) -> dict[str, set[str]]:
        """Pod id -> the models its MLServer reports READY (v2 repository index): what the pods hold."""
        rest = self.model_server_rest()
        out: dict[str, set[str]] = {}
        for pod in self.pods():
            url = rest.get(pod["grpcAddress"])
            if url is None:
                raise RuntimeError(f"no model server folder for pod {pod['id']} at {pod['grpcAddress']}")
            index = httpx.post(f"{url}/v2/repository/index", json={}, timeout=10).json()
            out[pod["id"]] = {m["name"] for m in index if m.get("state") == "READY"}
        return out

    # -- process handles ----------------------------------------------------------------------
    def pids(self, pod_id: str) -> dict[str, int]:
        return dict(self.pod_status()[pod_id]["pids"])

    def signal_pod(self, pod_id: str, sig: signal.Signals, *, which: tuple[str, ...] = ("mlserver", "puller")) -> dict[str, int]:
        pids = self.pids(pod_id)
        for name in which:
            os.kill(pids[name], sig)
        return pids

    def postgres_pids(self) -> list[int]:
        """The postmaster and every backend/auxiliary process under it."""
        pg = self.stack.postgres
        assert pg is not None, "Postgres is not the stack's own"
        master = supervise.postmaster_pid(pg.data_dir)
        assert master is not None, "Postgres is not running"
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == master:
                children.append(int(stat.parent.name))
        return [master, *children]

    # -- answering ----------------------------------------------------------------------------
    def answer(self, name: str, *, timeout: float = 30) -> str:
        """One request for `name` through the router: its gRPC status name."""
        with grpc.insecure_channel(self.stack.router_grpc) as channel:
            try:
                channel.unary_unary(INFER)(payload(name), timeout=timeout)
                return "OK"
            except grpc.RpcError as err:
                return str(err.code().name)  # type: ignore[attr-defined]

    def sweep(self, names: Iterable[str], *, deadline: float, workers: int = 4) -> dict[str, float]:
        """Ask each model until it answers once (monotonic `deadline`): name -> wall-clock time
        of its first answer; models that never answered are missing from the result."""
        answered: dict[str, float] = {}

        def one(name: str) -> None:
            while time.monotonic() < deadline:
                if self.answer(name, timeout=max(1.0, min(30.0, deadline - time.monotonic()))) == "OK":
                    answered[name] = time.time()
                    return
                time.sleep(0.1)   # a failed request: retry soon

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, list(names)))
        return answered


# -- the state checks after a case: nothing lost, nothing leaked ------------------------------

@dataclass
class Consistency:
    lost: list[str]          # registered before, not any more
    leaks: list[str]         # reservation or route mismatches (empty: consistent)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.leaks


def check_state(chaos: ChaosStack, registered_before: dict[str, str]) -> Consistency:
    """One look: registrations kept; per pod no bytes reserved beyond its copies, no load in
    progress, the same models in Redis as its model server holds; routes = loaded copies,
    each at the pod's current address."""
    now = chaos.registered()
    lost = sorted(v for v in registered_before if v not in now or now[v] != registered_before[v])
    leaks: list[str] = []
    pods = {p["id"]: p for p in chaos.pods()}
    held = chaos.held_by_model_servers()
    for pod_id, pod in pods.items():
        allocated = {m["id"] for m in pod["models"]}
        in_redis = sum(m["bytes"] for m in pod["models"])
        if pod["loading"]:
            leaks.append(f"{pod_id}: {pod['loading']} load(s) in progress")
        if pod["allocatedBytes"] != in_redis:
            leaks.append(f"{pod_id}: {pod['allocatedBytes']} bytes allocated, its copies hold {in_redis}")
        if allocated != held.get(pod_id, set()):
            extra, missing = sorted(allocated - held[pod_id]), sorted(held[pod_id] - allocated)
            leaks.append(f"{pod_id}: Redis-only {extra}, model-server-only {missing}")
    copies = chaos.copies()
    routes = chaos.routes()
    address = {pid: p["grpcAddress"] for pid, p in pods.items()}
    for model in sorted(set(copies) | set(routes)):
        want = {(pod, address.get(pod, "?")) for pod in copies.get(model, set())}
        got = routes.get(model, set())
        if want != got:
            leaks.append(f"route of {model}: {sorted(got)} but loaded copies {sorted(want)}")
    return Consistency(lost=lost, leaks=leaks)


def settle(chaos: ChaosStack, registered_before: dict[str, str], *, timeout: float = 90) -> Consistency:
    """`check_state` until consistent (state converges after a fault: heartbeats, rebuilds) or
    `timeout`; the last look either way."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = check_state(chaos, registered_before)
        except (httpx.HTTPError, grpc.RpcError, RuntimeError, KeyError) as err:
            state = Consistency(lost=[], leaks=[f"could not read the state: {err}"])
        if state.ok or time.monotonic() >= deadline:
            return state
        time.sleep(0.5)


def tails(chaos: ChaosStack, lines: int = 15) -> str:
    """The last lines of every process log of the stack (controller's pods included), for a
    failing test's message."""
    out = []
    for log in sorted((chaos.config.root / "logs").glob("*.log")):
        try:
            text = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        out.append(f"--- {log.name}\n" + "\n".join(text))
    return "\n".join(out)


@contextlib.contextmanager
def running(config: ChaosConfig, *, first_answers_within: float = 300) -> Iterator[ChaosStack]:
    """A started ChaosStack whose every model has answered once (its first load done), stopped after."""
    chaos = ChaosStack(config).start()
    try:
        answered = chaos.sweep(chaos.names, deadline=time.monotonic() + first_answers_within)
        if len(answered) != len(chaos.names):
            raise RuntimeError(f"models that never answered: {sorted(set(chaos.names) - set(answered))}\n{tails(chaos)}")
        yield chaos
    finally:
        chaos.stop()
