"""The router's composition root on the common skeleton (Python data path), against a stand-in
scheduler (a real grpc.aio server whose WatchRoutes sends its snapshot when the test says):
`/healthz` + `/readyz` from `common.health` on the REST door (ready once the first route
snapshot arrived; KServe's `/v2/health/ready` says the same), the named background tasks, and
a stop that closes both doors and ends the route stream."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import httpx
import pytest

from meshserve.cli.procs import free_port
from meshserve.common.lifecycle import Lifecycle
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as pbg
from meshserve.router.app import RouterApp
from meshserve.router.settings import RouterSettings


class Scheduler(pbg.SchedulerServicer):
    """WatchRoutes: the snapshot once `release` is set, then nothing until the stream ends."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.watching = asyncio.Event()
        self.stream_ended = asyncio.Event()

    async def WatchRoutes(self, request: pb.WatchRoutesRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.RouteUpdate]:
        self.watching.set()
        try:
            await self.release.wait()
            yield pb.RouteUpdate(snapshot=True)
            await asyncio.Event().wait()
        finally:
            self.stream_ended.set()


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 20.0, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def scheduler() -> AsyncIterator[tuple[Scheduler, str]]:
    servicer = Scheduler()
    server = grpc.aio.server()
    pbg.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_probes_follow_the_route_snapshot_and_a_stop_closes_the_doors(scheduler: tuple[Scheduler, str]) -> None:
    fake, address = scheduler
    rest_port = free_port()
    app = RouterApp(RouterSettings(
        scheduler_address=address, grpc_address="127.0.0.1:0", rest_host="127.0.0.1", rest_port=rest_port,
        metrics_port=0, data_path="python",
    ))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rest_port}") as http:
        async with Lifecycle("router") as life:
            serving = asyncio.create_task(app.serve(life))

            async def live() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(live, what="/healthz")
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            await asyncio.wait_for(fake.watching.wait(), 20)
            r = await http.get("/readyz")
            assert (r.status_code, r.json()) == (503, {"status": "not ready", "problems": ["routes"]})
            assert (await http.get("/v2/health/ready")).status_code == 503
            assert {"rest", "watch-routes", "report-usage"} <= set(life.tasks)

            fake.release.set()

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await eventually(ready, what="/readyz after the snapshot")
            assert (await http.get("/readyz")).json() == {"status": "ready"}
            assert (await http.get("/v2/health/ready")).json() == {"ready": True}
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:  # the gRPC door
                live_rpc = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
                reply = await live_rpc(v2.ServerLiveRequest().SerializeToString(), timeout=10)
                assert v2.ServerLiveResponse.FromString(reply).live
            life.stop()
            await asyncio.wait_for(serving, 10)
        assert life.failure is None
        assert all(t.done() for t in life.tasks.values())
        await asyncio.wait_for(fake.stream_ended.wait(), 10)  # the route stream was closed
        with pytest.raises(httpx.TransportError):  # the REST door is closed
            await http.get("/healthz")


async def test_https_metrics_without_a_certificate_serve_a_self_signed_one(scheduler: tuple[Scheduler, str]) -> None:
    """`metrics.scheme: https` (the controller sets MESHSERVE_ROUTER_METRICS_SCHEME): the metrics
    port serves TLS with a certificate generated at start-up; plain HTTP gets no page."""
    import ssl

    _, address = scheduler
    rest_port, metrics_port = free_port(), free_port()
    app = RouterApp(RouterSettings(
        scheduler_address=address, grpc_address="127.0.0.1:0", rest_host="127.0.0.1", rest_port=rest_port,
        metrics_port=metrics_port, metrics_scheme="https", data_path="python",
    ))
    async with Lifecycle("router") as life:
        serving = asyncio.create_task(app.serve(life))

        async def up() -> bool:
            try:
                with socket_to(metrics_port):
                    return True
            except OSError:
                return False

        await eventually(up, what="the metrics port")
        served = ssl.get_server_certificate(("127.0.0.1", metrics_port), timeout=10)
        trusting = ssl.create_default_context(cadata=served)
        trusting.check_hostname = False   # names: the host name, localhost, 127.0.0.1
        async with httpx.AsyncClient(verify=trusting) as client:
            page = await client.get(f"https://127.0.0.1:{metrics_port}/metrics")
        assert page.status_code == 200 and "meshserve_router" in page.text
        async with httpx.AsyncClient() as client:   # the system CAs do not know it
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://127.0.0.1:{metrics_port}/metrics")
            with pytest.raises(httpx.TransportError):
                await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
        life.stop()
        await asyncio.wait_for(serving, 10)
    assert life.failure is None


def socket_to(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=1)
