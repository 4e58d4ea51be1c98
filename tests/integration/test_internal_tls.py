"""Every internal gRPC hop on mutual TLS from the one setting (`MESHSERVE_INTERNAL_TLS__*`, made
by the local stack's private CA: `StackConfig(internal_tls=True)`), over the real processes.

The stack of its own: scheduler, router, controller (local mode) and one runtime pod started by
the stack, plus the runtime pod the controller starts for the applied ServingRuntime. A model the
controller registered (controller -> scheduler) is loaded by the first request (router ->
scheduler -> puller; the pods' heartbeats are puller -> scheduler) and answers; then every
internal gRPC port refuses a plaintext client and a TLS client without a client certificate, and
answers one presenting a certificate of the mesh's CA; no log holds key material."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import grpc
import pytest
import tritonclient.grpc as grpcclient
import yaml

from meshserve.cli.devstack import INTERNAL_TLS_SERVICES, Stack, StackConfig
from meshserve.cli.main import main as cli
from meshserve.common.proto.meshserve.v1 import (
    runtime_pb2,
    runtime_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

from .conftest import EXAMPLES, mnist_inputs, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_YAML = ROOT / "examples" / "isvc" / "mlserver-1.x-servingruntime.yaml"
ISVC_YAML = ROOT / "examples" / "isvc" / "example-mlserver-sklearn-mnist-isvc.yaml"
ISVC = "example-sklearn-mnist-svm"


def _cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli(list(argv))
    return rc, err.getvalue()


def _pods(stack: Stack) -> list[dict[str, Any]]:
    return stack.admin("GET", "/v1/pods").json()["items"]  # type: ignore[no-any-return]


def _ports(stack: Stack) -> dict[str, str]:
    """Every internal gRPC server: the scheduler's and each registered puller's (the admin API
    lists a pod's model-server address, so a puller's own port is read from its start line)."""
    pullers: dict[str, str] = {}
    for log in stack.group.log_dir.glob("*-puller.log"):
        for pod, port in re.findall(r"puller (\S+) serving ModelRuntime on :(\d+)", log.read_text(errors="replace")):
            pullers[f"puller {pod}"] = f"127.0.0.1:{port}"
    registered = {f"puller {p['id']}" for p in _pods(stack)}
    assert registered <= set(pullers), (registered, pullers)
    return {"scheduler": stack.scheduler_grpc, **pullers}


def _probe(name: str) -> Callable[[grpc.Channel], object]:
    if name == "scheduler":
        return lambda ch: scheduler_pb2_grpc.SchedulerStub(ch).GetModelStatus(
            scheduler_pb2.GetModelStatusRequest(model_id="tls-probe"), timeout=10)
    return lambda ch: runtime_pb2_grpc.ModelRuntimeStub(ch).RuntimeStatus(runtime_pb2.RuntimeStatusRequest(), timeout=10)


def _outcome(call: Callable[[grpc.Channel], object], channel: grpc.Channel) -> grpc.StatusCode:
    """OK for an answer, else the status the call failed with."""
    with channel:
        try:
            call(channel)
        except grpc.RpcError as err:
            return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _credentials(stack: Stack, *, client_cert: bool) -> grpc.ChannelCredentials:
    d = stack.tls_dir
    if not client_cert:
        return grpc.ssl_channel_credentials(root_certificates=(d / "ca.crt").read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=(d / "ca.crt").read_bytes(),
        private_key=(d / "router.key").read_bytes(),
        certificate_chain=(d / "router.crt").read_bytes(),
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("internal-tls"))
    s = Stack(StackConfig.from_env(root, pods=0, isolate=True, internal_tls=True))
    try:
        s.start_infra()
        s.migrate()
        s.start_scheduler()
        s.start_router()
        s.start_controller()
        s.upload_examples(EXAMPLES)
        s.wait_for_pods([s.start_pod()])
        config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-serving-config"},
                  "data": {"config.yaml": "podsPerRuntime: 1\n"}}
        config_file = root / "model-serving-config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        rc, err = _cli("apply", "-f", str(config_file), "-f", str(RUNTIME_YAML), "-f", str(ISVC_YAML), "--admin", s.admin_url)
        assert rc == 0, err
        # the controller's runtime pod (its puller registers over TLS too)
        wait_for(lambda: len(_pods(s)) >= 2, timeout=120, what="the runtime pod the controller starts")
        yield s
    finally:
        s.stop()


def test_a_model_the_controller_registered_loads_and_answers_with_every_internal_hop_on_tls(stack: Stack) -> None:
    # controller -> scheduler: RegisterModel / SetVModel
    wait_for(lambda: stack.admin("GET", f"/v1/vmodels/{ISVC}").status_code == 200, timeout=60, what="the controller's registration")
    # router -> scheduler (EnsureLoaded) -> puller (LoadModel); the front door is plaintext
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        assert client.infer(ISVC, mnist_inputs(), client_timeout=90).as_numpy("predict").tolist() == [[8]]
    finally:
        client.close()


def test_every_internal_grpc_port_refuses_plaintext_and_certificate_less_clients(stack: Stack) -> None:
    ports = _ports(stack)
    assert len(ports) >= 3, ports  # the scheduler, the stack's pod and the controller's
    for name, address in ports.items():
        call = _probe(name)
        host_port = address.replace("127.0.0.1", "localhost")
        plaintext = _outcome(call, grpc.insecure_channel(address))
        no_cert = _outcome(call, grpc.secure_channel(host_port, _credentials(stack, client_cert=False)))
        mesh_cert = _outcome(call, grpc.secure_channel(host_port, _credentials(stack, client_cert=True)))
        assert plaintext is grpc.StatusCode.UNAVAILABLE, f"{name} at {address} answered a plaintext client: {plaintext}"
        assert no_cert is grpc.StatusCode.UNAVAILABLE, f"{name} at {address} answered a client without a certificate: {no_cert}"
        # control: the same call with a certificate of the mesh's CA gets an answer (the port is alive)
        assert mesh_cert in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), f"{name} at {address}: {mesh_cert}"


def test_no_key_material_in_any_log(stack: Stack) -> None:
    keys = [stack.tls_dir / f"{service}.key" for service in INTERNAL_TLS_SERVICES]
    # the base64 body of every private key, and of its DER form in another wrapping
    secrets = []
    for key in keys:
        body = "".join(line for line in key.read_text().splitlines() if not line.startswith("-----"))
        secrets += [body[i : i + 40] for i in range(0, len(body) - 40, 40)]
        secrets.append(base64.b64decode(body).hex()[:64])
    logs = [p for p in stack.root.rglob("*") if p.is_file() and (p.suffix == ".log" or "logs" in p.parts)]
    assert logs, "no logs found"
    seen = 0
    for log in logs:
        text = log.read_text(errors="replace")
        seen += len(text)
        assert not re.search(r"PRIVATE KEY", text), f"{log} holds a PEM private key"
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{log} holds key material"
    assert seen > 0
