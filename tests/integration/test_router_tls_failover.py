"""Router TLS on both front doors (own router process, self-signed cert), and a copy
killed mid-traffic (an extra pod, so the shared pods stay up)."""

from __future__ import annotations

import datetime
import ipaddress
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshserve.cli.devstack import Stack
from meshserve.cli.procs import free_port

from .conftest import IRIS_URI, mnist_inputs, wait_for

pytestmark = pytest.mark.integration
IRIS_BATCH = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "router.crt", directory / "router.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_on_grpc_and_rest(stack: Stack, tmp_path: Path, unique: str) -> None:
    cert, key = self_signed(tmp_path)
    grpc_port, rest_port = free_port(), free_port()
    env = {
        **stack.service_env(),
        "MESHSERVE_ROUTER_ROUTER_ID": f"tls-{unique}",
        "MESHSERVE_ROUTER_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "MESHSERVE_ROUTER_REST_HOST": "127.0.0.1",
        "MESHSERVE_ROUTER_REST_PORT": str(rest_port),
        "MESHSERVE_ROUTER_SCHEDULER_ADDRESS": stack.scheduler_grpc,
        "MESHSERVE_ROUTER_METRICS_PORT": "0",
        "MESHSERVE_ROUTER_TLS__CERT_FILE": str(cert),
        "MESHSERVE_ROUTER_TLS__KEY_FILE": str(key),
    }
    proc = stack.group.start(f"router-tls-{unique}", [stack.python, "-m", "meshserve.router"], env=env)
    try:
        url = f"https://127.0.0.1:{rest_port}"
        stack.group.wait_until(proc, lambda: httpx.get(f"{url}/readyz", verify=str(cert), timeout=1).status_code == 200, timeout=30, what="TLS router")
        name = f"tls-{unique}"
        assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
        client = grpcclient.InferenceServerClient(f"localhost:{grpc_port}", ssl=True, root_certificates=str(cert))
        try:
            assert client.is_server_ready()
            assert client.infer(name, mnist_inputs(IRIS_BATCH)).as_numpy("predict").ravel().tolist() == [0, 2]
        finally:
            client.close()
        body = {"inputs": [{"name": "predict", "shape": [2, 4], "datatype": "FP32", "data": IRIS_BATCH.ravel().tolist()}]}
        response = httpx.post(f"{url}/v2/models/{name}/infer", json=body, verify=str(cert), timeout=60)
        assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [0, 2]
        with pytest.raises(httpx.ConnectError):  # no plain-text fallback, and an unknown CA is refused
            httpx.get(f"{url}/readyz", timeout=5)
    finally:
        proc.popen.terminate()
        assert proc.popen.wait(timeout=15) == 0


def test_a_copy_killed_mid_traffic_is_retried_on_another(stack: Stack, triton: grpcclient.InferenceServerClient, unique: str) -> None:
    extra = stack.start_pod(index=90)
    stack.wait_for_pods([extra])
    name = f"failover-{unique}"
    response = stack.register(name, storage_uri=IRIS_URI, minCopies=3, maxCopies=3)
    assert response.status_code == 201, response.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a copy on every pod, the extra one included
        triton.infer(name, mnist_inputs(IRIS_BATCH))
        pods = {c["pod"] for c in stack.admin("GET", f"/v1/models/{name}").json()["copies"] if c["state"] == "loaded"}
        if extra.pod_id in pods and len(pods) >= 2:
            break
        time.sleep(0.2)  # poll interval of the bounded wait above
    else:
        raise AssertionError(f"minCopies=3 on three pods did not put a copy on {extra.pod_id} (copies on {pods})")

    failures: list[BaseException] = []
    done = threading.Event()
    counts = [0]

    def traffic() -> None:
        client = grpcclient.InferenceServerClient(stack.router_grpc)
        try:
            while not done.is_set():
                try:
                    assert client.infer(name, mnist_inputs(IRIS_BATCH)).as_numpy("predict").ravel().tolist() == [0, 2]
                    counts[0] += 1
                except BaseException as err:  # collected, asserted below
                    failures.append(err)
        finally:
            client.close()

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: counts[0] >= 10, what="traffic flowing")
    before = counts[0]
    extra.mlserver.popen.kill()  # type: ignore[attr-defined]
    extra.puller.popen.kill()  # type: ignore[attr-defined]
    wait_for(lambda: counts[0] > before + 40 or bool(failures), what="traffic after the kill")
    done.set()
    for t in threads:
        t.join(timeout=30)
    assert not failures, [str(f) for f in failures[:3]]
    assert counts[0] > before + 10  # traffic kept flowing after the kill
