"""The router with `MESHSERVE_ROUTER_DATA_PATH=envoy` on a stack of its own: Envoy holds the
router's ports and forwards warm requests straight to the pods; the Python router, behind
it on loopback, feeds it routes and serves what Envoy cannot route. Every router suite
also runs against this data path when the variable is set for the whole run; this module
checks what only this path has: warm requests really bypass Python, they still count as
usage and in the router's metrics, and a killed Envoy is restarted by the router."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.cli.devstack import Stack

from .conftest import IRIS_URI, data_path_stack, mnist_inputs, wait_for

pytestmark = pytest.mark.integration
IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


@pytest.fixture(scope="module")
def estack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with data_path_stack(tmp_path_factory, "envoy") as s:
        yield s


def forwarded(stack: Stack, protocol: str) -> float:
    """meshserve_router_envoy_forwarded_total{protocol} from the router's /metrics (served by
    the Python router, reached through Envoy's REST listener)."""
    text = httpx.get(f"{stack.router_rest}/metrics", timeout=10).text
    match = re.search(rf'^meshserve_router_envoy_forwarded_total{{protocol="{protocol}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _infer(client: grpcclient.InferenceServerClient, name: str) -> list[int]:
    return client.infer(name, mnist_inputs(IRIS)).as_numpy("predict").ravel().tolist()


def test_warm_requests_bypass_the_python_router_and_still_count(estack: Stack, unique: str) -> None:
    name = f"iris-{unique}"
    assert estack.register(name, storage_uri=IRIS_URI).status_code == 201
    client = grpcclient.InferenceServerClient(estack.router_grpc)
    try:
        assert _infer(client, name) == [0, 2]  # cold: the slow path loads it
        before = forwarded(estack, "grpc")
        # the route reaches Envoy within milliseconds of the load; until then the slow path answers
        wait_for(lambda: _infer(client, name) == [0, 2] and forwarded(estack, "grpc") > before,
                 what="a request forwarded by Envoy")
        start = forwarded(estack, "grpc")
        for _ in range(10):
            assert _infer(client, name) == [0, 2]
        wait_for(lambda: forwarded(estack, "grpc") >= start + 10, what="Envoy's access log of 10 requests")
    finally:
        client.close()
    rest = httpclient.InferenceServerClient(estack.router_rest.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("predict", list(IRIS.shape), "FP32")
        inp.set_data_from_numpy(IRIS, binary_data=False)  # binary tensors go to the slow path
        rest_before = forwarded(estack, "rest")
        assert rest.infer(name, [inp]).as_numpy("predict").ravel().tolist() == [0, 2]
        wait_for(lambda: forwarded(estack, "rest") > rest_before, what="a REST request forwarded by Envoy")
    finally:
        rest.close()
    # what Envoy served reaches the scheduler as usage, as the Python path's requests do
    wait_for(lambda: estack.admin("GET", f"/v1/models/{name}").json()["requests"] >= 10, what="the usage report")
    text = httpx.get(f"{estack.router_rest}/metrics", timeout=10).text
    assert re.search(rf'meshserve_router_requests_total{{code="OK",method="ModelInfer",model="{name}",protocol="grpc"}} (\d+)', text)


def test_what_envoy_cannot_route_gets_the_python_routers_answer(estack: Stack) -> None:
    client = grpcclient.InferenceServerClient(estack.router_grpc)
    try:
        with pytest.raises(InferenceServerException) as err:
            client.infer("no-such-model", mnist_inputs(IRIS))
        assert err.value.status() == "StatusCode.NOT_FOUND"
        assert "no-such-model" in (err.value.message() or "")
        assert client.is_server_ready()
    finally:
        client.close()


def _envoy_pid(stack: Stack) -> int:
    router = stack.group.find("router")
    assert router is not None
    for task in Path(f"/proc/{router.popen.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if "envoy" in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].decode():
                return int(child)
    raise AssertionError("the router has no Envoy child process")


def test_a_killed_envoy_is_restarted_by_the_router(estack: Stack, unique: str) -> None:
    name = f"iris-restart-{unique}"
    assert estack.register(name, storage_uri=IRIS_URI).status_code == 201
    client = grpcclient.InferenceServerClient(estack.router_grpc)
    try:
        assert _infer(client, name) == [0, 2]
        old = _envoy_pid(estack)
        os.kill(old, signal.SIGKILL)

        def answers_again() -> bool:
            try:
                return _infer(client, name) == [0, 2]
            except InferenceServerException:
                return False

        wait_for(answers_again, what="the model answering through a new Envoy")
        assert _envoy_pid(estack) != old
        text = httpx.get(f"{estack.router_rest}/metrics", timeout=10).text
        assert re.search(r"^meshserve_router_envoy_restarts_total (\S+)$", text, re.M)
        assert float(re.search(r"^meshserve_router_envoy_restarts_total (\S+)$", text, re.M).group(1)) >= 1  # type: ignore[union-attr]
    finally:
        client.close()


def test_two_routers_share_the_ports_and_both_serve_every_model(estack: Stack, unique: str, tmp_path: Path) -> None:
    """Routers scale out side by side: a second router process (its own Envoy and Python
    router, fed by the same scheduler) binds the same gRPC and REST ports (SO_REUSEPORT);
    connections spread over both, and each serves every model."""
    import subprocess
    import sys

    from meshserve.cli.procs import free_port

    names = [f"iris-two-{unique}-{i}" for i in range(3)]
    for name in names:
        assert estack.register(name, storage_uri=IRIS_URI).status_code == 201
    router = estack.group.find("router")
    assert router is not None and router.env is not None
    metrics = {"first": free_port(), "second": free_port()}
    second_env = {**os.environ, **router.env, "MESHSERVE_ROUTER_ROUTER_ID": f"second-{unique}",
                  "MESHSERVE_ROUTER_METRICS_PORT": str(metrics["second"])}  # fmt: skip
    log = (tmp_path / "second-router.log").open("wb")
    second = subprocess.Popen([sys.executable, "-m", "meshserve.router"], env=second_env, stdout=log, stderr=log)
    try:
        def served_by(port: int) -> set[str] | None:
            """The models this router counted requests for (None: its metrics port is not up)."""
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                return None
            return set(re.findall(r'^meshserve_router_requests_total\{[^}]*model="(iris-two-[^"]*)"[^}]*\} [1-9]', text, re.M))

        wait_for(lambda: served_by(metrics["second"]) is not None, what="the second router's metrics port")

        def second_served_all() -> bool:
            for name in names:  # a new connection each time: the kernel spreads them over both
                client = grpcclient.InferenceServerClient(estack.router_grpc)
                try:
                    assert _infer(client, name) == [0, 2]
                finally:
                    client.close()
            return served_by(metrics["second"]) == set(names)

        wait_for(second_served_all, what="the second router serving every model")
    finally:
        second.terminate()
        assert second.wait(timeout=30) == 0, (tmp_path / "second-router.log").read_text()[-2000:]
        log.close()
