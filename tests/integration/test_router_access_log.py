"""The router's access log (upstream's `enableAccessLogging`, here MESHSERVE_ROUTER_ACCESS_LOG)
on both data paths: each stack's router runs with the access log on and JSON logs; gRPC and
REST inference (by model name and by vmodel header) each leave one line in the router's log
with the model, the vmodel, the pod, the status, the time, the sizes, the protocol and the
method. On the Envoy path, warm requests are Envoy's (their lines come from its access
log, `data_path: envoy`); on the Python path every line is the router's own."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from meshserve.cli.devstack import Stack

from .conftest import IRIS_URI, data_path_stack, mnist_inputs, wait_for

pytestmark = pytest.mark.integration
IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
BODY = {"inputs": [{"name": "predict", "shape": [2, 4], "datatype": "FP32", "data": IRIS.ravel().tolist()}]}


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    given = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in given.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module", params=["python", "envoy"])
def lstack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    with _env(MESHSERVE_ROUTER_ACCESS_LOG="true", MESHSERVE_ROUTER_LOG_JSON="true"):
        with data_path_stack(tmp_path_factory, request.param) as s:
            yield s, request.param


def access_lines(stack: Stack) -> list[dict[str, object]]:
    router = stack.group.find("router")
    assert router is not None
    out = []
    for line in router.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("name") == "meshserve.router.access":
                out.append(record)
    return out


def _lines_for(stack: Stack, model: str, **match: object) -> list[dict[str, object]]:
    return [r for r in access_lines(stack) if r.get("model_id") == model and all(r.get(k) == v for k, v in match.items())]


def test_every_inference_request_leaves_one_structured_line(lstack: tuple[Stack, str], unique: str) -> None:
    stack, data_path = lstack
    name, vmodel = f"iris-{unique}", f"iris-vm-{unique}"
    assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    put = stack.admin("PUT", f"/v1/vmodels/{vmodel}", json={"targetModelId": name, "owner": "test"})
    assert put.status_code == 200, put.text
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        assert client.infer(name, mnist_inputs(IRIS), client_timeout=60).as_numpy("predict").ravel().tolist() == [0, 2]

        def sent_and_logged() -> bool:
            client.infer(name, mnist_inputs(IRIS), client_timeout=30)
            return bool(_lines_for(stack, name, protocol="grpc", method="ModelInfer", data_path=data_path))

        wait_for(sent_and_logged, timeout=60, what=f"a gRPC line from the {data_path} path")
        client.infer("", mnist_inputs(IRIS), headers={"mm-vmodel-id": vmodel}, client_timeout=30)
    finally:
        client.close()

    def rest_sent_and_logged() -> bool:
        reply = httpx.post(f"{stack.router_rest}/v2/models/{name}/infer", json=BODY, timeout=30)
        assert reply.status_code == 200, reply.text
        return bool(_lines_for(stack, name, protocol="rest", method="ModelInfer", data_path=data_path))

    wait_for(rest_sent_and_logged, timeout=60, what=f"a REST line from the {data_path} path")
    missing = httpx.post(f"{stack.router_rest}/v2/models/nope-{unique}/infer", json=BODY, timeout=60)
    assert missing.status_code == 404

    grpc_line = _lines_for(stack, name, protocol="grpc", method="ModelInfer", data_path=data_path)[0]
    rest_line = _lines_for(stack, name, protocol="rest", method="ModelInfer", data_path=data_path)[0]
    not_found = wait_for(lambda: _lines_for(stack, f"nope-{unique}", protocol="rest"), what="the 404's line")
    for line in (grpc_line, rest_line):
        assert line["level"] == "INFO" and line["service"] == "router", line
        assert isinstance(line["ms"], (int, float)) and line["ms"] >= 0, line
        assert isinstance(line["request_bytes"], int) and line["request_bytes"] > 0, line
        assert isinstance(line["response_bytes"], int) and line["response_bytes"] > 0, line
        assert line["pod"] == "pod-0", line  # the stack's one pod
        assert line["vmodel_id"] == "-", line
    assert grpc_line["status"] == "OK" and rest_line["status"] == "200"
    assert not_found[0]["status"] == "404" and not_found[0]["pod"] == "-" and not_found[0]["method"] == "ModelInfer"
    # the request that named the vmodel: its line names both, on the Envoy path from Envoy's
    # access log (route.lua's vmodel, and the pod from %UPSTREAM_HOST%: the one Envoy chose)
    by_vmodel = wait_for(
        lambda: _lines_for(stack, name, protocol="grpc", status="OK", vmodel_id=vmodel, data_path=data_path),
        what="the vmodel request's line",
    )  # fmt: skip
    assert by_vmodel[0]["pod"] == "pod-0"
    # one line per request: the 404 was sent once
    assert len(not_found) == 1
