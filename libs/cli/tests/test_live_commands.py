"""`meshserve get models -w`, `load`, `top pods|models`, `logs <pod>` and `apply --wait`'s
errors against a real local stack: Redis, Postgres, S3 (moto), scheduler, router (per-model
metrics on) and one runtime pod (MLServer + puller), as processes on loopback.

The watch and `logs -f` run as child processes, read line by line against a deadline and
ended with SIGINT (Ctrl-C) like a user would; the other commands run in this process.
Nothing waits for a fixed time: every wait is for a line or a state.
"""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig
from meshserve.cli.main import main as cli
from meshserve.cli.procs import free_port
from meshserve.cli.top import parse_router_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "models"
MNIST_URI = f"s3://{EXAMPLE_BUCKET}/sklearn/mnist-svm.joblib"
DEADLINE = 120.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not (EXAMPLES / "sklearn" / "mnist-svm.joblib").exists():
        pytest.fail("example models missing: run `make examples` (make test does it)")
    s = Stack(StackConfig.from_env(tmp_path_factory.mktemp("cli-live"), pods=1, isolate=True,
                                   extra_env={"MESHSERVE_ROUTER_PER_MODEL_METRICS": "true"}))
    s.start()
    try:
        s.upload_examples(EXAMPLES)
        yield s
    finally:
        s.stop()


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli(list(argv))
    return rc, out.getvalue(), err.getvalue()


class Child:
    """`meshserve ...` as a child process whose stdout is read line by line against a deadline."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshserve.cli.main", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, *words: str, where: Callable[[list[str]], bool] = lambda row: True) -> str:
        """The first line (from here on) that holds every word and whose columns pass `where`."""
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {words} in time; saw: {self.seen}") from None
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait()}) before a line with {words}; saw: {self.seen}; "
                                     f"stderr: {self.proc.stderr.read() if self.proc.stderr else ''}")
            self.seen.append(line)
            if all(w in line for w in words) and where(line.split()):
                return line

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit code and what it wrote on stderr."""
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=30)
        return rc, self.proc.stderr.read() if self.proc.stderr else ""


def infer(stack: Stack, model: str, n: int) -> None:
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        for _ in range(n):
            inp = grpcclient.InferInput("predict", [1, 64], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
            client.infer(model, [inp], client_timeout=90)
    finally:
        client.close()


def router_requests(stack: Stack, model: str) -> float:
    text = httpx.get(f"{stack.router_rest}/metrics", timeout=10).text
    return parse_router_metrics(text).requests.get(model, 0.0)


def wait_for(check, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE
    delay = 0.05
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(delay)   # a poll between checks of a condition, not a synchronisation by time
        delay = min(delay * 1.5, 0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_watch_shows_a_model_registered_loading_loaded_and_unregistered(stack: Stack) -> None:
    name = f"watched-{uuid.uuid4().hex[:6]}"
    watch = Child("get", "models", "-w", "--interval", "0.2", "--admin", stack.admin_url)
    try:
        watch.until("MODEL", "STATE", "PODS")
        assert stack.register(name, storage_uri=MNIST_URI).status_code == 201
        assert watch.until(where=lambda row: row[:1] == [name]).split()[2] == "Standby"
        rc, _out, err = run_cli("load", name, "--admin", stack.admin_url)
        assert rc == 0, err
        loaded = watch.until(where=lambda row: row[:1] == [name] and row[2] == "Loaded")
        assert "pod-0:loaded" in loaded
        assert stack.admin("DELETE", f"/v1/models/{name}").status_code == 204
        assert watch.until(where=lambda row: row[:1] == [name] and row[2] == "Unregistered").split()[3] == "0"
    finally:
        rc, err = watch.interrupt()
    assert rc == 0 and "Traceback" not in err, err


def test_load_shows_the_progress_until_loaded_with_the_time_taken(stack: Stack) -> None:
    name = f"progress-{uuid.uuid4().hex[:6]}"
    assert stack.register(name, storage_uri=MNIST_URI).status_code == 201
    rc, out, err = run_cli("load", name, "--admin", stack.admin_url)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[-1].startswith(f"{name}: Loaded on pod-0 (") and lines[-1].endswith("s)"), lines
    assert all(line.startswith(f"{name}: ") for line in lines)
    states = [line.split()[1] for line in lines]
    assert states[-1] == "Loaded" and set(states) <= {"Standby", "Loading", "Loaded"}


def test_a_load_that_fails_says_why_and_exits_1(stack: Stack) -> None:
    name = f"broken-{uuid.uuid4().hex[:6]}"
    missing = f"s3://{EXAMPLE_BUCKET}/sklearn/no-such-{name}.joblib"
    assert stack.register(name, storage_uri=missing).status_code == 201
    rc, _out, err = run_cli("load", name, "--admin", stack.admin_url)
    assert rc == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert name in err


def test_top_models_and_pods_from_the_metrics(stack: Stack) -> None:
    name = f"busy-{uuid.uuid4().hex[:6]}"
    assert stack.register(name, storage_uri=MNIST_URI, loadNow=True).status_code == 201
    infer(stack, name, 5)
    wait_for(lambda: router_requests(stack, name) >= 5, "the router to count the requests")
    metrics = f"{stack.router_rest}/metrics"
    rc, out, err = run_cli("top", "models", "--once", "--interval", "0.2", "--metrics", metrics,
                           "--admin", stack.admin_url)
    assert rc == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["MODEL", "STATE", "COPIES", "REQUESTS", "REQ/S", "AVG", "MS", "P95", "MS"]
    row = next(r.split() for r in rows if r.startswith(name + " "))
    assert row[1:4] == ["Loaded", "1/1", "5"]
    float(row[4])                                        # a rate over the window (no requests in it: 0.00)
    assert row[5] == "-" or float(row[5]) >= 0           # no request inside the window: no latency for it
    rc, out, err = run_cli("top", "pods", "--once", "--interval", "0.2", "--metrics", metrics,
                           "--admin", stack.admin_url)
    assert rc == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["POD", "RUNTIME", "CAPACITY", "USED"]
    pod = next(r.split() for r in rows if r.startswith("pod-0 "))
    models = len(stack.admin("GET", "/v1/pods").json()["items"][0]["models"])
    assert pod[2] == "512.0Mi" and pod[3] != "-" and pod[6] == str(models) and models >= 1
    float(pod[8])


def test_top_shows_the_latency_of_the_requests_in_its_window(stack: Stack) -> None:
    name = f"timed-{uuid.uuid4().hex[:6]}"
    assert stack.register(name, storage_uri=MNIST_URI, loadNow=True).status_code == 201
    infer(stack, name, 1)
    wait_for(lambda: router_requests(stack, name) >= 1, "the router to count the request")
    top = Child("top", "models", "--interval", "0.2", "--metrics", f"{stack.router_rest}/metrics",
                "--admin", stack.admin_url)
    try:
        top.until(where=lambda row: row[:1] == [name] and row[3] == "1")   # since the router started
        infer(stack, name, 3)
        row = top.until(where=lambda row: row[:1] == [name] and row[3] == "4").split()
        assert float(row[4]) > 0, row   # the frame that first counts all four: its window holds one at least
        if row[5] == "-":   # the router counts a request just before it times it: the time is in the next window
            row = top.until(where=lambda row: row[:1] == [name] and row[5] != "-").split()
        assert float(row[5]) > 0 and float(row[6]) > 0, row
    finally:
        rc, err = top.interrupt()
    assert rc == 0 and "Traceback" not in err, err


def test_logs_of_a_pod_whole_and_followed(stack: Stack) -> None:
    root = str(stack.root)
    rc, out, err = run_cli("logs", "pod-0", "--local-root", root, "--admin", stack.admin_url)
    assert rc == 0, err
    assert any(line.startswith("[mlserver] ") for line in out.splitlines())
    assert any(line.startswith("[puller] ") for line in out.splitlines())
    rc, out, err = run_cli("logs", "pod-0", "-c", "puller", "--tail", "3", "--local-root", root,
                           "--admin", stack.admin_url)
    assert rc == 0 and len(out.splitlines()) == 3 and not out.startswith("["), out
    first, second = (f"followed-{uuid.uuid4().hex[:6]}" for _ in range(2))
    follow = Child("logs", "pod-0", "-f", "-c", "puller", "--local-root", root, "--admin", stack.admin_url)
    try:
        assert stack.register(first, storage_uri=MNIST_URI, loadNow=True).status_code == 201
        follow.until(first)   # from the whole file or from following it: either way it follows from now on
        assert stack.register(second, storage_uri=MNIST_URI, loadNow=True).status_code == 201
        follow.until(second)  # written after the line above was printed: only following shows it
    finally:
        rc, err = follow.interrupt()
    assert rc == 0 and "Traceback" not in err, err


def test_an_unknown_pod_names_the_known_ones(stack: Stack) -> None:
    rc, out, err = run_cli("logs", "pod-9", "--local-root", str(stack.root), "--admin", stack.admin_url)
    assert rc == 1 and not out
    assert err.strip().splitlines() == [err.strip()] and "known pods: pod-0" in err, err


@pytest.mark.parametrize("argv", [
    pytest.param(["get", "models"], id="get"),
    pytest.param(["get", "models", "-w"], id="watch"),
    pytest.param(["top", "pods", "--once"], id="top"),
    pytest.param(["load", "m"], id="load"),
    pytest.param(["describe", "model", "m"], id="describe"),
])
def test_an_unreachable_stack_is_one_line_and_exit_1(argv: list[str]) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    code, _out, err = run_cli(*argv, "--admin", nobody)
    assert code == 1
    assert err.startswith("error: cannot reach the scheduler admin API at " + nobody), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    pytest.param(["load", "no-such-model"], id="load"),
    pytest.param(["describe", "model", "no-such-model"], id="describe"),
])
def test_a_bad_model_name_is_one_line_and_exit_1(stack: Stack, argv: list[str]) -> None:
    code, _out, err = run_cli(*argv, "--admin", stack.admin_url)
    assert code == 1
    assert err.startswith("error: ") and "no-such-model" in err and len(err.strip().splitlines()) == 1, err
