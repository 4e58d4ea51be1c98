"""Payload processors (upstream's `payloadProcessors`, here MESHSERVE_ROUTER_PAYLOAD_PROCESSORS)
on a stack of its own whose router is configured for the Envoy data path: two real HTTP
receivers (aiohttp, in a thread of this test) are the processors: one records what it
gets, one never answers. Every gRPC and REST inference request and its response arrive at
the first as CloudEvents with upstream's attributes and the payload in the body; the
hanging one holds its connection the whole time, yet every request completes within its
deadline, and its full queue drops events and counts them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from aiohttp import web

from meshserve.cli.devstack import Stack
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2

from .conftest import IRIS_URI, data_path_stack, mnist_inputs, wait_for

pytestmark = pytest.mark.integration
IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
BODY = {"inputs": [{"name": "predict", "shape": [2, 4], "datatype": "FP32", "data": IRIS.ravel().tolist()}]}
QUEUE = 4


class Receivers:
    """Two aiohttp servers on loopback in a thread: /ok records, /hang never answers."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.held = 0  # connections the hanging receiver holds right now
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.release: asyncio.Event | None = None
        self.ports: list[int] = []
        self._runners: list[web.AppRunner] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _ok(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            self.events.append(({k.lower(): v for k, v in request.headers.items()}, body))
        return web.Response(status=200)

    async def _hang(self, request: web.Request) -> web.Response:
        assert self.release is not None
        with self.lock:
            self.held += 1
        try:
            await self.release.wait()
        finally:
            with self.lock:
                self.held -= 1
        return web.Response(status=200)

    async def _start(self) -> None:
        self.release = asyncio.Event()
        for handler in (self._ok, self._hang):
            app = web.Application()
            app.router.add_post("/{tail:.*}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            site = web.SockSite(runner, sock)
            await site.start()
            self.ports.append(sock.getsockname()[1])
            self._runners.append(runner)

    async def _stop(self) -> None:
        assert self.release is not None
        self.release.set()
        for runner in self._runners:
            await runner.cleanup()

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)

    def wait_for_events(self, model: str, count: int) -> None:
        wait_for(lambda: len(self.of_model(model)) >= count, what=f"{count} events of {model} at /events")

    def of_model(self, model: str) -> list[tuple[dict[str, str], dict[str, object]]]:
        with self.lock:
            return [(h, json.loads(b)) for h, b in self.events if h.get("ce-modelid") == model]


@pytest.fixture(scope="module")
def receivers() -> Iterator[Receivers]:
    r = Receivers()
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def pstack(receivers: Receivers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ok, hang = receivers.ports
    values = {
        "MESHSERVE_ROUTER_PAYLOAD_PROCESSORS": f"http://127.0.0.1:{ok}/events, http://127.0.0.1:{hang}/hang",
        "MESHSERVE_ROUTER_PAYLOAD_QUEUE_SIZE": str(QUEUE),
        "MESHSERVE_ROUTER_PAYLOAD_TIMEOUT_SECONDS": "600",  # the hanging one holds its connection all along
    }
    given = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        with data_path_stack(tmp_path_factory, "envoy") as s:
            yield s
    finally:
        for key, value in given.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _payload_counter(stack: Stack, port: int, outcome: str) -> float:
    text = httpx.get(f"{stack.router_rest}/metrics", timeout=10).text
    pattern = rf'^meshserve_router_payload_events_total{{outcome="{outcome}",processor="http://127.0.0.1:{port}/[^"]*"}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def _children_commands(pid: int) -> list[str]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                out.append(Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].decode())
    return out


def test_every_request_and_response_arrives_as_a_cloud_event(pstack: Stack, receivers: Receivers, unique: str) -> None:
    name, vmodel = f"iris-{unique}", f"iris-vm-{unique}"
    assert pstack.register(name, storage_uri=IRIS_URI).status_code == 201
    put = pstack.admin("PUT", f"/v1/vmodels/{vmodel}", json={"targetModelId": name, "owner": "test"})
    assert put.status_code == 200, put.text
    client = grpcclient.InferenceServerClient(pstack.router_grpc)
    try:
        assert client.infer(name, mnist_inputs(IRIS), client_timeout=60).as_numpy("predict").ravel().tolist() == [0, 2]
        receivers.wait_for_events(name, 2)  # (the processors' queues are small: one request at a time)
        client.infer("", mnist_inputs(IRIS), headers={"mm-vmodel-id": vmodel}, client_timeout=30)
        receivers.wait_for_events(name, 4)
    finally:
        client.close()
    reply = httpx.post(f"{pstack.router_rest}/v2/models/{name}/infer", json=BODY, timeout=60)
    assert reply.status_code == 200, reply.text

    receivers.wait_for_events(name, 6)
    events = receivers.of_model(name)
    assert len(events) == 6
    for headers, body in events:
        assert headers["ce-specversion"] == "1.0" and headers["ce-source"].startswith("meshserve-router/")
        assert headers["content-type"] == "application/json" and headers["ce-time"].endswith("Z")
        assert headers["ce-type"] == f"org.kubeflow.serving.inference.{body['kind']}"
        assert headers["ce-id"] == body["id"] and body["modelid"] == name and headers["ce-method"] == "ModelInfer"
    by_id: dict[str, dict[str, tuple[dict[str, str], dict[str, object]]]] = {}
    for headers, body in events:
        by_id.setdefault(headers["ce-id"], {})[str(body["kind"])] = (headers, body)
    assert len(by_id) == 3 and all(set(pair) == {"request", "response"} for pair in by_id.values())
    grpc_pairs = [p for p in by_id.values() if p["request"][0]["ce-protocol"] == "grpc"]
    rest_pairs = [p for p in by_id.values() if p["request"][0]["ce-protocol"] == "rest"]
    assert len(grpc_pairs) == 2 and len(rest_pairs) == 1
    for pair in grpc_pairs:
        request = v2.ModelInferRequest.FromString(base64.b64decode(str(pair["request"][1]["data"])))
        response = v2.ModelInferResponse.FromString(base64.b64decode(str(pair["response"][1]["data"])))
        assert request.inputs[0].name == "predict" and response.model_name == name
        assert pair["response"][0]["ce-status"] == "OK" and pair["response"][1]["status"] == "OK"
    assert sorted(p["request"][0].get("ce-vmodelid", "") for p in grpc_pairs) == ["", vmodel]
    rest_request, rest_response = rest_pairs[0]["request"][1], rest_pairs[0]["response"][1]
    assert json.loads(base64.b64decode(str(rest_request["data"]))) == BODY
    assert json.loads(base64.b64decode(str(rest_response["data"])))["outputs"][0]["data"] == [0, 2]
    assert rest_pairs[0]["response"][0]["ce-status"] == "200"
    # configured for Envoy, the router serves every request itself: no Envoy was started
    router = pstack.group.find("router")
    assert router is not None
    assert not [c for c in _children_commands(router.popen.pid) if "envoy" in c]


def test_a_hanging_processor_slows_no_request_and_its_drops_are_counted(
    pstack: Stack, receivers: Receivers, unique: str
) -> None:
    name = f"iris-{unique}"
    assert pstack.register(name, storage_uri=IRIS_URI).status_code == 201
    ok, hang = receivers.ports
    dropped_before = _payload_counter(pstack, hang, "dropped")
    client = grpcclient.InferenceServerClient(pstack.router_grpc)
    requests = 3 * QUEUE
    try:
        client.infer(name, mnist_inputs(IRIS), client_timeout=60)  # loads the model
        wait_for(lambda: receivers.held >= 1, what="the hanging receiver holding a connection")
        for sent in range(requests):  # each within a deadline, while the hanging one holds on
            assert client.infer(name, mnist_inputs(IRIS), client_timeout=10).as_numpy("predict").ravel().tolist() == [0, 2]
            assert receivers.held >= 1
            # the healthy processor keeps up (its queue is small too): its events are in
            receivers.wait_for_events(name, 2 * (sent + 2))
    finally:
        client.close()
    for sent in range(requests):
        reply = httpx.post(f"{pstack.router_rest}/v2/models/{name}/infer", json=BODY, timeout=10)
        assert reply.status_code == 200
        receivers.wait_for_events(name, 2 * (requests + sent + 2))
    assert receivers.held >= 1
    # the hanging processor holds one event and queues QUEUE: every other one was dropped
    dropped = _payload_counter(pstack, hang, "dropped") - dropped_before
    assert dropped >= 2 * (2 * requests + 1) - QUEUE - 1, dropped
    # the healthy processor got all of them
    wait_for(lambda: len(receivers.of_model(name)) >= 2 * (2 * requests + 1) or None, what="every event at /events")
    assert len(receivers.of_model(name)) == 2 * (2 * requests + 1)
    assert _payload_counter(pstack, ok, "dropped") == 0
