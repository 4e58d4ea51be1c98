"""The puller's composition root on the common skeleton, against a fake model server (HTTP,
MLServer's repository API) and a fake scheduler (a real grpc.aio server): /healthz at once,
/readyz only while serving ModelRuntime, errors mapped by the interceptor, a graceful stop that
says goodbye, and a dead background task that stops the puller."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshserve.common.lifecycle import Lifecycle, ServiceFailed
from meshserve.common.proto.meshserve.v1 import (
    runtime_pb2,
    runtime_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from meshserve.common.settings import TLSSettings
from meshserve.puller.app import PullerApp
from meshserve.puller.settings import PullerSettings


class FakeModelServer:
    def __init__(self) -> None:
        self.ready = False
        self.index_calls = 0
        self.malformed_after = 10**9

        async def health(_: Request) -> Response:
            return Response(status_code=200 if self.ready else 503)

        async def index(_: Request) -> JSONResponse:
            self.index_calls += 1
            return JSONResponse(["not-a-model-entry"] if self.index_calls > self.malformed_after else [])

        app = Starlette(routes=[Route("/v2/health/ready", health), Route("/v2/repository/index", index, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        # bound and listening before uvicorn runs: early connections wait in the backlog
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"


class FakeScheduler(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self) -> None:
        self.reports: list[scheduler_pb2.PodReport] = []
        self.reported = asyncio.Event()

    async def ReportPod(self, request: scheduler_pb2.PodReport, context: grpc.aio.ServicerContext) -> scheduler_pb2.ReportPodResponse:
        self.reports.append(request)
        self.reported.set()
        return scheduler_pb2.ReportPodResponse(heartbeat_interval_ms=100)


@pytest.fixture
async def model_server() -> AsyncIterator[FakeModelServer]:
    fake = FakeModelServer()
    task = asyncio.create_task(fake.server.serve(sockets=[fake.socket]))
    yield fake
    fake.server.should_exit = True
    await task


@pytest.fixture
async def scheduler() -> AsyncIterator[tuple[FakeScheduler, str]]:
    servicer = FakeScheduler()
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


def settings_for(tmp_path: Path, model_server: FakeModelServer, scheduler_address: str, health_port: int) -> PullerSettings:
    (tmp_path / "models").mkdir()
    return PullerSettings(
        pod_id="pod-1", listen_address="127.0.0.1:0", model_dir=tmp_path / "models",
        storage_config_dir=tmp_path / "storage-config", model_server_rest=model_server.url,
        scheduler_address=scheduler_address, health_port=health_port, metrics_port=0,
    )


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 20.0, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_probes_errors_and_a_graceful_stop(
    tmp_path: Path, model_server: FakeModelServer, scheduler: tuple[FakeScheduler, str]
) -> None:
    fake_scheduler, address = scheduler
    health_port = free_port()
    app = PullerApp(settings_for(tmp_path, model_server, address, health_port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health_port}") as http, Lifecycle("puller") as life:
        serving = asyncio.create_task(app.serve(life))

        async def live() -> bool:
            try:
                return (await http.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(live, what="/healthz")
        r = await http.get("/readyz")
        assert (r.status_code, r.json()["problems"]) == (503, ["modelruntime"])  # model server not ready yet
        model_server.ready = True

        async def ready() -> bool:
            return (await http.get("/readyz")).status_code == 200

        await eventually(ready, what="/readyz")
        await asyncio.wait_for(fake_scheduler.reported.wait(), 20)
        assert fake_scheduler.reports[0].pod_id == "pod-1" and not fake_scheduler.reports[0].leaving

        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = runtime_pb2_grpc.ModelRuntimeStub(channel)
            assert (await stub.ModelSize(runtime_pb2.ModelSizeRequest(model_id="nope"), timeout=5)).size_in_bytes == 0
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.LoadModel(runtime_pb2.LoadModelRequest(model_id="../x"), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "may only use letters" in (err.value.details() or "")

        life.stop()
        await asyncio.wait_for(serving, 10)
    assert fake_scheduler.reports[-1].leaving  # said goodbye
    with pytest.raises(httpx.TransportError):  # health server closed
        await httpx.AsyncClient().get(f"http://127.0.0.1:{health_port}/healthz")


async def test_a_dead_heartbeat_stops_the_puller(
    tmp_path: Path, model_server: FakeModelServer, scheduler: tuple[FakeScheduler, str]
) -> None:
    _, address = scheduler
    model_server.ready = True
    model_server.malformed_after = 1  # the purge's index is fine, the heartbeat's is not
    app = PullerApp(settings_for(tmp_path, model_server, address, 0))
    with pytest.raises(ServiceFailed) as failed:
        async with Lifecycle("puller") as life:
            await asyncio.wait_for(app.serve(life), 20)
    assert failed.value.task == "heartbeat"
    assert isinstance(failed.value.__cause__, AttributeError)  # 'str' has no .get: a bug, not an outage


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (openssl), as a pod's own."""
    cert, key = directory / "pod.crt", directory / "pod.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_the_report_carries_the_per_copy_limit_and_metrics_are_served_over_https(
    tmp_path: Path, model_server: FakeModelServer, scheduler: tuple[FakeScheduler, str]
) -> None:
    """`metrics_scheme: https` (the config's metrics.scheme): the pod's metrics port speaks TLS
    with the pod's certificate, and nothing else; `limit_per_model_concurrency` (the runtime's
    perModelConcurrencyLimit) reaches the scheduler in every report."""
    fake_scheduler, address = scheduler
    model_server.ready = True
    cert, key = self_signed(tmp_path)
    port = free_port()
    settings = settings_for(tmp_path, model_server, address, 0).model_copy(
        update={
            "metrics_port": port, "metrics_scheme": "https", "limit_per_model_concurrency": 4,
            "tls": TLSSettings(cert_file=cert, key_file=key),
        }
    )
    app = PullerApp(settings)
    async with Lifecycle("puller") as life:
        serving = asyncio.create_task(app.serve(life))
        await asyncio.wait_for(fake_scheduler.reported.wait(), 20)
        assert fake_scheduler.reports[0].max_concurrency_per_model == 4
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(cert))) as https:
            r = await https.get(f"https://127.0.0.1:{port}/metrics")
        assert r.status_code == 200 and "modelmesh_instance_capacity_bytes" in r.text
        with pytest.raises(httpx.TransportError):  # plain HTTP gets no metrics
            async with httpx.AsyncClient() as plain:
                await plain.get(f"http://127.0.0.1:{port}/metrics")
        life.stop()
        await asyncio.wait_for(serving, 10)


async def test_https_metrics_without_a_certificate_serve_a_self_signed_one_generated_at_start(
    tmp_path: Path, model_server: FakeModelServer, scheduler: tuple[FakeScheduler, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`metrics_scheme: https` on a pod without a certificate (a Kubernetes runtime pod): the
    puller generates a self-signed one, logs that it did, and serves the metrics port over TLS
    with it: a client that trusts exactly that certificate scrapes, plain HTTP gets nothing."""
    fake_scheduler, address = scheduler
    model_server.ready = True
    port = free_port()
    settings = settings_for(tmp_path, model_server, address, 0).model_copy(
        update={"metrics_port": port, "metrics_scheme": "https", "tls": TLSSettings()}
    )
    app = PullerApp(settings)
    with caplog.at_level("INFO", logger="meshserve.common.metrics_tls"):
        async with Lifecycle("puller") as life:
            serving = asyncio.create_task(app.serve(life))
            await asyncio.wait_for(fake_scheduler.reported.wait(), 20)
            served = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
            trust = ssl.create_default_context(cadata=served)  # verify against the generated cert
            async with httpx.AsyncClient(verify=trust) as https:
                r = await https.get(f"https://127.0.0.1:{port}/metrics")
            assert r.status_code == 200 and "modelmesh_instance_capacity_bytes" in r.text
            with pytest.raises(httpx.ConnectError):  # a client trusting the system CAs refuses it
                async with httpx.AsyncClient() as strict:
                    await strict.get(f"https://127.0.0.1:{port}/metrics")
            with pytest.raises(httpx.TransportError):  # plain HTTP gets no metrics
                async with httpx.AsyncClient() as plain:
                    await plain.get(f"http://127.0.0.1:{port}/metrics")
            life.stop()
            await asyncio.wait_for(serving, 10)
    assert any("self-signed certificate generated at start-up" in rec.getMessage() for rec in caplog.records)
    assert all("PRIVATE KEY" not in rec.getMessage() for rec in caplog.records)
