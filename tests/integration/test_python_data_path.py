"""The router with `MESHSERVE_ROUTER_DATA_PATH=python` (for machines without Envoy) on a
stack of its own: the Python router holds the ports itself and forwards every request. The
other router suites run on the default Envoy data path; this module keeps the Python one
answering the same requests the same way: gRPC and REST inference, a vmodel by header, an
unknown model, bad input, usage reports, and no Envoy started. Its pod has a per-copy
concurrency limit (perModelConcurrencyLimit), which the Python router enforces."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from meshserve.cli.devstack import Stack

from .conftest import IRIS_URI, data_path_stack, mnist_inputs, wait_for

pytestmark = pytest.mark.integration
IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


LIMIT = 1
"""The runtime pod's perModelConcurrencyLimit (its puller's LIMIT_PER_MODEL_CONCURRENCY): one
request per copy at once; the router queues the rest."""


@pytest.fixture(scope="module")
def pstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    given = os.environ.get("MESHSERVE_PULLER_LIMIT_PER_MODEL_CONCURRENCY")
    os.environ["MESHSERVE_PULLER_LIMIT_PER_MODEL_CONCURRENCY"] = str(LIMIT)  # the pod's puller inherits it
    try:
        with data_path_stack(tmp_path_factory, "python") as s:
            yield s
    finally:
        if given is None:
            os.environ.pop("MESHSERVE_PULLER_LIMIT_PER_MODEL_CONCURRENCY", None)
        else:
            os.environ["MESHSERVE_PULLER_LIMIT_PER_MODEL_CONCURRENCY"] = given


def _children_commands(pid: int) -> list[str]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out.append(Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].decode())
    return out


def test_the_python_router_serves_both_doors_and_reports_usage(pstack: Stack, unique: str) -> None:
    name, vmodel = f"iris-{unique}", f"iris-vm-{unique}"
    assert pstack.register(name, storage_uri=IRIS_URI).status_code == 201
    put = pstack.admin("PUT", f"/v1/vmodels/{vmodel}", json={"targetModelId": name, "owner": "test"})
    assert put.status_code == 200, put.text
    client = grpcclient.InferenceServerClient(pstack.router_grpc)
    try:
        for _ in range(5):
            assert client.infer(name, mnist_inputs(IRIS)).as_numpy("predict").ravel().tolist() == [0, 2]
        by_header = client.infer("", mnist_inputs(IRIS), headers={"mm-vmodel-id": vmodel})
        assert by_header.get_response().model_name == name
    finally:
        client.close()
    body = {"inputs": [{"name": "predict", "shape": [2, 4], "datatype": "FP32", "data": IRIS.ravel().tolist()}]}
    reply = httpx.post(f"{pstack.router_rest}/v2/models/{name}/infer", json=body, timeout=60)
    assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [0, 2]
    wait_for(lambda: pstack.admin("GET", f"/v1/models/{name}").json()["requests"] >= 5, what="the usage report")
    router = pstack.group.find("router")
    assert router is not None
    assert not [c for c in _children_commands(router.popen.pid) if "envoy" in c]
    metrics = httpx.get(f"{pstack.router_rest}/metrics", timeout=10).text
    assert "meshserve_router_envoy_forwarded_total{" not in metrics
    # upstream's time-on-pod and sizes are measured by the Python door too
    for family in ("modelmesh_invoke_model_milliseconds", "modelmesh_request_size_bytes", "modelmesh_response_size_bytes"):
        found = re.search(rf'^{family}_count{{code="OK",method="ModelInfer"}} (\S+)$', metrics, re.M)
        assert found is not None and float(found.group(1)) >= 6, family


def test_unknown_models_and_bad_tensors_get_the_same_answers(pstack: Stack, unique: str) -> None:
    name = f"iris-bad-{unique}"
    assert pstack.register(name, storage_uri=IRIS_URI).status_code == 201
    client = grpcclient.InferenceServerClient(pstack.router_grpc)
    try:
        with pytest.raises(InferenceServerException) as err:
            client.infer("no-such-model", mnist_inputs(IRIS))
        assert err.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as err:
            client.infer(name, mnist_inputs(IRIS[:, :3]))
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT", err.value.message()
    finally:
        client.close()


def _queue_delay_count(stack: Stack) -> float:
    metrics = httpx.get(f"{stack.router_rest}/metrics", timeout=10).text
    found = re.search(r"^modelmesh_req_queue_delay_milliseconds_count (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_the_pods_concurrency_limit_reaches_the_router_which_queues_and_answers_all(pstack: Stack, unique: str) -> None:
    """The limit travels puller -> scheduler (PodReport) -> route endpoint -> router: the
    router counts every request of a limited model in upstream's queue-delay histogram (an
    unlimited model's requests never enter it), and concurrent requests all get answers."""
    name = f"iris-limit-{unique}"
    assert pstack.register(name, storage_uri=IRIS_URI).status_code == 201
    before = _queue_delay_count(pstack)

    def infer(_: int) -> list[int]:
        client = grpcclient.InferenceServerClient(pstack.router_grpc)
        try:
            return client.infer(name, mnist_inputs(IRIS), client_timeout=120).as_numpy("predict").ravel().tolist()
        finally:
            client.close()

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(infer, range(5)))
    assert answers == [[0, 2]] * 5
    assert _queue_delay_count(pstack) - before == 5
