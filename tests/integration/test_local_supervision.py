"""Supervised processes in local mode (issue 20, item 1).

One dev-like stack for the module: private Redis, Postgres and S3, the scheduler, router and
controller (local mode, so the runtime pods are the controller's), with `meshserve dev`'s
supervisor (`meshserve.cli.supervise`) running over it in a thread, as `meshserve dev` runs it.
The tests run as one scenario, in file order: the Redis test sends traffic to the model the
first test deployed.

* a runtime pod whose model server is killed comes back under the same pod id, with its
  restart count shown by `meshserve get pods`, and serves again;
* a runtime pod killed while loading leaves no reservation behind;
* the private Redis killed under traffic is restarted on its port and the scheduler rebuilds;
* a process that crashes at once, again and again, makes the supervisor give up, naming it
  and quoting its log.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import yaml

from meshserve.cli import supervise
from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig
from meshserve.cli.main import main as cli
from meshserve.cli.procs import ProcessGroup
from meshserve.cli.resources import AdminClient, local_pod_status
from meshserve.cli.restarts import RestartPolicy

from .conftest import EXAMPLES, mnist_inputs, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ISVC_YAML = ROOT / "examples" / "isvc" / "example-mlserver-sklearn-mnist-isvc.yaml"
RUNTIME_YAML = ROOT / "examples" / "isvc" / "mlserver-1.x-servingruntime.yaml"
CUSTOM_RUNTIME_YAML = ROOT / "examples" / "custom" / "mlserver-custom-runtime.yaml"
ISVC = "example-sklearn-mnist-svm"
GATE_ISVC = "gated-load"

# a custom MLServer model whose load waits until a file exists: "killed while loading" on demand
GATE_MODEL = '''
import asyncio, json, os
from mlserver import MLModel
from mlserver.utils import get_model_uri

class Gate(MLModel):
    async def load(self) -> bool:
        with open(await get_model_uri(self._settings)) as f:
            gate = json.load(f)["gate"]
        while not os.path.exists(gate):
            await asyncio.sleep(0.05)
        return True
'''


class DevSupervisor:
    """`meshserve dev`'s supervision loop in a thread; what it said, and why it stopped."""

    def __init__(self, stack: Stack) -> None:
        self.said: list[str] = []
        self.failure: BaseException | None = None
        self.stop = threading.Event()
        self.supervisor = supervise.Supervisor(
            supervise.stack_units(stack, after_s3_restart=lambda: stack.upload_examples(EXAMPLES)),
            notify=self.said.append,
        )
        self.thread = threading.Thread(target=self._run, name="dev-supervisor", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.supervisor.run(self.stop, interval=0.2)
        except BaseException as err:
            self.failure = err

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("supervision"))
    # private Redis, Postgres and S3 (not MESHSERVE_*_URL): these tests kill them
    stack = Stack(StackConfig(root=root, pods=0, extra_env={"MESHSERVE_SCHEDULER_POD_TIMEOUT_SECONDS": "5"}))
    try:
        stack.start_infra()
        stack.migrate()
        stack.start_scheduler()
        stack.start_router()
        stack.upload_examples(EXAMPLES)
        stack.start_controller()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def dev(stack: Stack) -> Iterator[DevSupervisor]:
    sup = DevSupervisor(stack)
    try:
        yield sup
    finally:
        sup.close()
    assert sup.failure is None, f"the supervisor stopped: {sup.failure}"


def run_cli(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    try:
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        with redirect_stdout(out), redirect_stderr(err):
            rc = cli(list(argv))
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()


def pods_of(stack: Stack, runtime: str) -> list[dict[str, Any]]:
    return [p for p in stack.admin("GET", "/v1/pods").json()["items"] if p["runtime"] == runtime]


def pod_status(stack: Stack) -> dict[str, dict[str, Any]]:
    client = AdminClient(stack.admin_url)
    try:
        return local_pod_status(client, namespace="default")
    finally:
        client.close()


def answers(stack: Stack, name: str = ISVC) -> bool:
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        return bool(client.infer(name, mnist_inputs(), client_timeout=30).as_numpy("predict").tolist() == [[8]])
    except Exception:
        return False
    finally:
        client.close()


def model_id_of(stack: Stack, vmodel: str) -> str:
    body = stack.admin("GET", f"/v1/vmodels/{vmodel}").json()
    return str(body.get("activeModelId") or body.get("targetModelId") or "")


def test_a_killed_model_server_comes_back_under_the_same_pod_id_and_serves_again(stack: Stack, dev: DevSupervisor) -> None:
    config = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-serving-config"},
        "data": {"config.yaml": "podsPerRuntime: 1\nscaleToZero:\n  enabled: false\n"},
    }
    rc, _, err = run_cli("apply", "-f", "-", "--admin", stack.admin_url, stdin=yaml.safe_dump(config))
    assert rc == 0, err
    rc, _, err = run_cli("apply", "-f", str(RUNTIME_YAML), "-f", str(ISVC_YAML), "--admin", stack.admin_url)
    assert rc == 0, err
    [pod] = wait_for(lambda: pods_of(stack, "mlserver-1.x"), timeout=90, what="the controller's runtime pod")
    wait_for(lambda: answers(stack), timeout=90, what="the model answering")
    before = wait_for(lambda: pod_status(stack).get(pod["id"]), timeout=30, what="the pod's status")
    assert before["restarts"] == 0 and before["pids"]["mlserver"]

    os.kill(before["pids"]["mlserver"], signal.SIGKILL)

    after = wait_for(lambda: (s := pod_status(stack).get(pod["id"], {})).get("restarts") == 1 and s,
                     timeout=60, what="the pod restarted")
    assert after["pids"]["mlserver"] != before["pids"]["mlserver"]
    assert "mlserver killed by SIGKILL" in after["lastExit"]
    wait_for(lambda: [p for p in pods_of(stack, "mlserver-1.x") if p["id"] == pod["id"] and p["grpcAddress"] != pod["grpcAddress"]],
             timeout=60, what="the replacement registered under the same pod id")
    assert [p["id"] for p in pods_of(stack, "mlserver-1.x")] == [pod["id"]]
    wait_for(lambda: answers(stack), timeout=90, what="the model answering again")
    rc, out, err = run_cli("get", "pods", "--admin", stack.admin_url)
    assert rc == 0, err
    header, *rows = out.splitlines()
    assert header.split()[-1] == "RESTARTS"
    row = next(r for r in rows if r.startswith(pod["id"]))
    assert row.split()[6] == "1", row   # "1 (12s ago)"
    assert dev.failure is None


def test_a_pod_killed_while_loading_leaves_no_reservation(stack: Stack, dev: DevSupervisor, tmp_path: Path) -> None:
    gate = tmp_path / "open"
    files = {"model-settings.json": json.dumps({"name": "gate", "implementation": "gate.Gate", "parameters": {"uri": "./gate.json"}}),
             "gate.py": GATE_MODEL, "gate.json": json.dumps({"gate": str(gate)})}
    for name, text in files.items():
        stack.s3_client().put_object(Bucket=EXAMPLE_BUCKET, Key=f"custom/gate/{name}", Body=text.encode())
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": GATE_ISVC, "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "custom-scaler"}, "storage": {"key": "localMinIO", "path": "custom/gate"}}}},
    }
    rc, _, err = run_cli("apply", "-f", str(CUSTOM_RUNTIME_YAML), "-f", "-", "--admin", stack.admin_url, stdin=yaml.safe_dump(isvc))
    assert rc == 0, err
    [pod] = wait_for(lambda: pods_of(stack, "mlserver-custom"), timeout=90, what="the custom runtime's pod")
    model = wait_for(lambda: model_id_of(stack, GATE_ISVC), timeout=30, what="the gated model registered")
    caller = threading.Thread(target=answers, args=(stack, GATE_ISVC), daemon=True)   # its first request loads it
    caller.start()
    try:
        wait_for(lambda: [p for p in pods_of(stack, "mlserver-custom") if p["loading"] >= 1], timeout=60, what="the load in progress")
        before = pod_status(stack)[pod["id"]]
        os.kill(before["pids"]["puller"], signal.SIGKILL)
        # the replacement is a new process: the scheduler may load the model there again (the
        # failure recorded on the dead one is forgotten), so let any such load finish
        gate.write_text("")
        caller.join(timeout=120)
        assert not caller.is_alive()
        wait_for(lambda: pod_status(stack).get(pod["id"], {}).get("restarts") == before["restarts"] + 1,
                 timeout=60, what="the pod restarted")

        def clean() -> dict[str, Any] | None:
            """The replacement's accounting holds only what it really loaded: nothing left
            reserved by the killed load (no load in progress, allocated = its copies)."""
            mine = [p for p in pods_of(stack, "mlserver-custom") if p["id"] == pod["id"]]
            if not mine or mine[0]["grpcAddress"] == pod["grpcAddress"]:
                return None   # the replacement has not reported yet
            state = mine[0]
            held = sum(m["bytes"] for m in state["models"])
            return state if state["loading"] == 0 and state["allocatedBytes"] == held else None

        wait_for(clean, timeout=60, what="the replacement pod with nothing left reserved")

        def settled() -> bool:
            """A new load may have placed the model anywhere (the leader re-places a copy lost
            with the dropped pod): it finishes, the gate being open."""
            copies: list[dict[str, Any]] = stack.admin("GET", f"/v1/models/{model}").json()["copies"]
            return all(c["state"] == "loaded" for c in copies)

        wait_for(settled, timeout=120, what="every copy of the gated model loaded")
    finally:
        gate.write_text("")
        run_cli("delete", "-f", str(CUSTOM_RUNTIME_YAML), "-f", "-", "--admin", stack.admin_url, stdin=yaml.safe_dump(isvc))
    assert dev.failure is None


def test_redis_killed_under_traffic_is_restarted_on_its_port_and_the_scheduler_rebuilds(stack: Stack, dev: DevSupervisor) -> None:
    served: list[bool] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            served.append(answers(stack))

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        wait_for(lambda: served.count(True) > 3, timeout=60, what="traffic flowing")
        redis = stack.group.find("redis")
        assert redis is not None
        said = len(dev.said)
        os.kill(redis.popen.pid, signal.SIGKILL)
        wait_for(lambda: "redis restarted (restart 1)" in dev.said[said:], timeout=60, what="Redis restarted")
        assert any(m.startswith("redis killed by SIGKILL; restarting it in") for m in dev.said[said:])
        again = stack.group.find("redis")
        assert again is not None and again.popen.pid != redis.popen.pid and again.alive
        assert again.argv == redis.argv   # same port, same folder
        assert stack.redis_url.endswith(f":{redis.argv[redis.argv.index('--port') + 1]}/0")
        model = model_id_of(stack, ISVC)
        wait_for(lambda: stack.admin("GET", f"/v1/models/{model}").json().get("state") == "Loaded",
                 timeout=60, what="the scheduler's copy rebuilt from the pullers' reports")
        n = len(served)
        wait_for(lambda: served[n:].count(True) > 3, timeout=60, what="answers after the restart")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert all(p.alive for p in stack.group.procs), [p.name for p in stack.group.procs if not p.alive]
    assert dev.failure is None


def test_a_process_that_crashes_at_once_makes_the_supervisor_give_up_with_its_log(tmp_path: Path) -> None:
    group = ProcessGroup(log_dir=tmp_path)
    group.start("crasher", [sys.executable, "-c", "import sys; print('crasher: no config file here'); sys.exit(3)"])
    said: list[str] = []
    supervisor = supervise.Supervisor(
        [supervise.process_unit(group, "crasher")], notify=said.append,
        policy=RestartPolicy(max_restarts=5, window_seconds=60, base_delay=0.02, max_delay=0.1),
    )
    stop = threading.Event()
    guard = threading.Timer(120, stop.set)   # against a hang only: the assertions below never race it
    guard.start()
    try:
        with pytest.raises(supervise.CrashLoop) as caught:
            supervisor.run(stop, interval=0.02)
    finally:
        guard.cancel()
        group.stop_all()
    message = str(caught.value)
    assert caught.value.name == "crasher"
    assert message.startswith("crasher keeps crashing (5 restarts within 60s; last it exited with code 3)")
    assert "crasher: no config file here" in message.splitlines()[-1]
    assert [m for m in said if m.startswith("crasher restarted")] == [f"crasher restarted (restart {i})" for i in range(1, 6)]
