"""The model-pressure autoscaler in local mode, over the whole stack as processes: a runtime
annotated `min-scale: 1`, `max-scale: 2` starts with one pod; more models than one pod holds,
asked for in turn, evict each other (churn) and the controller starts a second pod; once the
turns stop and the idle copies stay idle for the window, the controller drains the newest
pod (its copies re-placed on the other) and stops it, while a steady stream of requests to
one model never fails.

The windows are a few seconds (controller settings); every wait polls its condition with a bound."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import yaml

from meshserve.cli.devstack import Stack, StackConfig

from .conftest import EXAMPLES, mnist_inputs, wait_for
from .test_controller_local import apply_docs, isvc_doc

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_YAML = ROOT / "examples" / "isvc" / "mlserver-1.x-servingruntime.yaml"
RUNTIME = "mlserver-1.x"
MODELS = 40
POD_CAPACITY = 6 * 1024 * 1024
"""mnist-svm copies measure ~0.27 MiB each in MLServer once warm (the first ~4.6 MiB, one
not measured counts disk x 1.25 = 0.41 MiB): one pod holds ~20 of the forty, two hold all."""
AUTOSCALE = {
    "MESHSERVE_CONTROLLER_AUTOSCALE_INTERVAL_SECONDS": "1",
    "MESHSERVE_CONTROLLER_AUTOSCALE_PRESSURE_WINDOW_SECONDS": "10",
    "MESHSERVE_CONTROLLER_AUTOSCALE_UP_EVICTED_FRACTION": "0.05",
    "MESHSERVE_CONTROLLER_AUTOSCALE_UP_WINDOW_SECONDS": "4",
    # under churn the least recently used copy is one turn old: ~20 requests, seconds on a busy host
    "MESHSERVE_CONTROLLER_AUTOSCALE_DOWN_IDLE_SECONDS": "30",
    "MESHSERVE_CONTROLLER_AUTOSCALE_DOWN_WINDOW_SECONDS": "8",
    "MESHSERVE_CONTROLLER_AUTOSCALE_COOLDOWN_SECONDS": "5",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("autoscale-local"))
    stack = Stack(StackConfig.from_env(root, pods=0, isolate=True, extra_env={
        "MESHSERVE_SCHEDULER_POD_TIMEOUT_SECONDS": "5",
        "MESHSERVE_SCHEDULER_MIN_RESIDENCY_SECONDS": "0",   # a copy may be evicted at once (churn on purpose)
    }))
    try:
        stack.start_infra()
        stack.migrate()
        stack.start_scheduler()
        stack.start_router()
        stack.upload_examples(EXAMPLES)
        stack.start_controller(extra_env={
            "MESHSERVE_CONTROLLER_LOCAL_POD_CAPACITY_BYTES": str(POD_CAPACITY),
            # the process pods, autoscaled (until app.py wraps the local backend itself)
            "MESHSERVE_CONTROLLER_LOCAL_PROVIDER": "meshserve.controller.local:autoscaled_process_runtimes",
            **AUTOSCALE,
        }, timeout=120)
        yield stack
    finally:
        stack.stop()


def serving_pods(stack: Stack) -> list[str]:
    return sorted(p["id"] for p in stack.admin("GET", "/v1/pods").json()["items"] if p["runtime"] == RUNTIME and not p["draining"])


def newest(pod_ids: list[str]) -> str:
    """The pod the process supervisor started last (`<deployment>-<sequence>`)."""
    return max(pod_ids, key=lambda p: int(p.rsplit("-", 1)[1]))


def pod_models(stack: Stack, pod_id: str) -> list[str]:
    pods = {p["id"]: p for p in stack.admin("GET", "/v1/pods").json()["items"]}
    return [m["id"] for m in pods[pod_id]["models"]] if pod_id in pods else []


class Requests(threading.Thread):
    """Sends inference requests one after another to `names` in turn until stopped; counts
    answers and keeps every failure."""

    def __init__(self, stack: Stack, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = grpcclient.InferenceServerClient(stack.router_grpc)
        self.names, self.ok, self.failures = names, 0, []  # type: ignore[var-annotated]
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            name = self.names[i % len(self.names)]
            i += 1
            try:
                got = self.client.infer(name, mnist_inputs(), client_timeout=60).as_numpy("predict").tolist()
                assert got == [[8]], got
                self.ok += 1
            except Exception as err:  # every failure is kept and asserted on
                self.failures.append(f"{name}: {type(err).__name__}: {err}")

    def stop(self) -> Requests:
        self.halt.set()
        self.join(timeout=120)
        self.client.close()
        return self


@pytest.mark.timeout(900)   # two pod starts and both windows, on a loaded 2-core host
def test_churn_adds_a_pod_and_idleness_drains_it_away(stack: Stack) -> None:
    runtime: dict[str, Any] = yaml.safe_load(RUNTIME_YAML.read_text())
    runtime["metadata"]["annotations"] = {"serving.kserve.io/min-scale": "1", "serving.kserve.io/max-scale": "2"}
    names = [f"svm-{i:02d}" for i in range(MODELS)]
    docs = []
    for name in names:
        doc = isvc_doc()
        doc["metadata"]["name"] = name
        docs.append(doc)
    apply_docs(stack, runtime, *docs)
    wait_for(lambda: all(stack.admin("GET", f"/v1/vmodels/{n}").status_code == 200 for n in names),
             timeout=60, what="every InferenceService registered")
    first = wait_for(lambda: serving_pods(stack), timeout=120, what="the runtime's first pod")
    assert len(first) == 1, f"min-scale 1: one pod first, got {first}"

    # churn: forty models in turn on one pod evict each other
    churn = Requests(stack, names)
    churn.start()
    try:
        # the turns go on until the new pod holds copies too (the drain must move them)
        two, held = wait_for(lambda: len(p := serving_pods(stack)) == 2 and (m := pod_models(stack, newest(p))) and (p, m),
                             timeout=240, what="a second pod for the churn, holding copies")
        newest_pod = newest(two)
    finally:
        churn.stop()
    assert churn.ok > 0
    assert not churn.failures, churn.failures[:5]
    pressure = stack.admin("GET", f"/v1/runtimes/{RUNTIME}/pressure", params={"windowSeconds": 300}).json()
    assert pressure["evictions"] > 0 and pressure["evictedBytes"] > 0, pressure

    # idle: one model the new pod holds keeps being asked for, the others' copies go cold; the
    # newest pod is drained (that copy moved to the other pod first) and stopped, and the
    # steady requests to it never fail
    target = next(n for n in names if any(m.startswith(f"{n}__") for m in held))
    steady = Requests(stack, [target])
    steady.start()
    try:
        one = wait_for(lambda: len(p := serving_pods(stack)) == 1 and p, timeout=240, what="the runtime back to one pod")
        wait_for(lambda: not [p for p in stack.admin("GET", "/v1/pods").json()["items"] if p["runtime"] == RUNTIME and p["draining"]],
                 timeout=60, what="the drained pod gone")
        before = steady.ok
        wait_for(lambda: steady.ok >= before + 5, timeout=60, what="requests after the scale-down")
    finally:
        steady.stop()
    assert not steady.failures, steady.failures[:5]
    assert sorted(set(two) - set(one)) == [newest_pod], (two, one)   # the newest pod went
    events = stack.admin("GET", "/v1/events", params={"pod": newest_pod}).json()["items"]
    assert {"draining", "drained"} <= {e["kind"] for e in events}, events
    moved = [e for e in events if e["kind"] == "evicted" and e["message"] == f"pod {newest_pod} drained"]
    assert any(e["model"].startswith(f"{target}__") for e in moved), events
    assert any(m.startswith(f"{target}__") for m in pod_models(stack, one[0])), "the steady model lives on the pod left"
