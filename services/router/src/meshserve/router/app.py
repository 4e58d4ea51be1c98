"""Composition root of the router: gRPC and REST front doors in one event loop, the
route watcher and the usage reporter. Owns the shutdown order.

Owns: `RouterApp` (builds the table, the scheduler client, the data plane, the upstream
clients and both doors, and the Envoy data path when it is on; runs the route watcher
and the usage reports; stops everything in reverse order).

Runs on the common skeleton (`meshserve.common.lifecycle`): `serve(life)` starts the metrics
port, the gRPC door, the REST door as the task `rest` (with `/healthz` + `/readyz` from
`common.health`: ready once the first route snapshot arrived, until shutdown starts), the
Envoy data path when it is on, and the named tasks `watch-routes` and `report-usage` (a task
that dies is logged and stops the router). On SIGTERM the closers run: readyz false -> Envoy
stopped -> the REST door told to exit, gRPC stopped (grace 2 s), the management API closed,
the REST door awaited -> the route watcher and the usage reports cancelled -> the fallback
expiry, the payload processors, the upstream clients and the scheduler channel closed.
May import: every router module; nothing imports it but `__main__` (and tests).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import uvicorn
from prometheus_client import start_http_server

from meshserve.common.backoff import backoff_delay
from meshserve.common.grpcutil import (
    SERVER_KEEPALIVE_OPTIONS,
    bind,
    message_size_options,
    open_channel,
)
from meshserve.common.health import Health
from meshserve.common.httputil import EmbeddedServer
from meshserve.common.lifecycle import Lifecycle
from meshserve.common.metrics_tls import certificate_names, metrics_tls
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc
from meshserve.common.settings import TLSSettings
from meshserve.router import access, metrics, mmesh_api
from meshserve.router.dataplane import DataPlane
from meshserve.router.other_rpcs import MethodTable, OtherRpcHandler
from meshserve.router.payloads import PayloadProcessors
from meshserve.router.rest import create_app
from meshserve.router.scheduler_client import SchedulerClient
from meshserve.router.server import InferenceHandler
from meshserve.router.settings import RouterSettings
from meshserve.router.table import Fallbacks, RoutingTable
from meshserve.router.upstream import GrpcUpstream, RestUpstream

if TYPE_CHECKING:  # the Envoy data path is imported only when used (it needs xds-protos)
    from meshserve.router.envoy.datapath import EnvoyDataPath
    from meshserve.router.envoy.usage import Served

log = logging.getLogger(__name__)


def _loopback_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _gauge_fallbacks(models: int, vmodels: int) -> None:
    metrics.FALLBACK_ROUTES.labels("model").set(models)
    metrics.FALLBACK_ROUTES.labels("vmodel").set(vmodels)


class RouterApp:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.clock = time.monotonic
        self.table = RoutingTable(fallback_seconds=settings.route_fallback_seconds)
        self.channel = open_channel(settings.scheduler_address, tls=settings.scheduler_tls)
        self.scheduler = SchedulerClient(scheduler_pb2_grpc.SchedulerStub(self.channel), router_id=settings.router_id)
        self.dataplane = DataPlane(settings=settings, table=self.table, scheduler=self.scheduler, clock=self.clock)
        if settings.payload_processors:
            self.dataplane.payloads = PayloadProcessors(
                settings.payload_processors, source=f"meshserve-router/{settings.router_id}",
                queue_size=settings.payload_queue_size, timeout_seconds=settings.payload_timeout_seconds,
            )
        self.grpc_upstream = GrpcUpstream(tls=settings.model_server_tls, max_message_bytes=settings.max_message_bytes)
        self.rest_upstream = RestUpstream(tls=settings.model_server_tls, max_connections=settings.rest_max_connections)
        self.envoy: EnvoyDataPath | None = None  # data_path "envoy": Envoy in front, this process its slow path
        self.health = Health()  # /healthz, /readyz; /v2/health/ready answers `ready()`, the same
        self.health.add_check("routes", lambda: self.table.synced)  # the first route snapshot arrived
        self.grpc_port = 0  # the gRPC door's (the slow path's, behind Envoy)
        self._expiry: asyncio.TimerHandle | None = None  # forgets the table's fallbacks when they expire

    def grpc_handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        """KServe v2 first; every other method goes to the other-RPC handler (in this order)."""
        methods = MethodTable(
            id_paths=self.settings.id_paths,
            allow_other_rpcs=self.settings.allow_other_rpcs,
            blocked=self.settings.blocked_methods,
        )
        return (
            InferenceHandler(self.dataplane, self.grpc_upstream),
            OtherRpcHandler(self.dataplane, self.grpc_upstream, methods),
        )

    def ready(self) -> bool:
        """KServe's server-ready (`/v2/health/ready`, gRPC ServerReady): what `/readyz` says."""
        return self.table.synced and not self.health.is_stopping

    def _rest_server(self, *, internal: bool = False) -> EmbeddedServer:
        """The REST door; `internal`: Envoy's slow path (plaintext, served on a socket given
        to `serve`; Envoy holds the public port and its TLS)."""
        tls = TLSSettings() if internal else self.settings.tls
        app = create_app(self.dataplane, self.rest_upstream, self.grpc_upstream, ready=self.ready,
                         extra_metrics=self._envoy_stats)
        # /healthz and /readyz are common.health's: first, so they answer before the door's own
        app.router.routes[:0] = self.health.starlette_routes()
        config = uvicorn.Config(
            app,
            host=self.settings.rest_host,
            port=self.settings.rest_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="none",
            http="auto",  # httptools when installed, else h11
            ws="none",
            timeout_keep_alive=75,
            ssl_certfile=str(tls.cert_file) if tls.cert_file else None,
            ssl_keyfile=str(tls.key_file) if tls.key_file else None,
            ssl_ca_certs=str(tls.ca_file) if tls.ca_file and tls.cert_file else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls.ca_file and tls.cert_file else ssl.CERT_NONE,
        )
        return EmbeddedServer(config)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (for callers without their own `Lifecycle`)."""
        async with Lifecycle("router") as life:
            life.handle_signals()
            await self.serve(life)

    async def serve(self, life: Lifecycle) -> None:
        """Start everything, then wait for `life` to stop; `life` closes what was started
        (closers run newest first: registered here in the reverse of the shutdown order)."""
        life.on_close(self.channel.close, name="scheduler channel")
        life.on_close(self.grpc_upstream.close, name="gRPC upstream")
        life.on_close(self.rest_upstream.close, name="REST upstream")
        metrics.configure(per_model=self.settings.per_model_metrics)
        access.configure(enabled=self.settings.access_log)
        if self.settings.metrics_port:
            with metrics_tls(
                self.settings.metrics_scheme, port=self.settings.metrics_port, names=certificate_names(),
                cert_file=self.settings.tls.cert_file, key_file=self.settings.tls.key_file,
            ) as tls:  # a generated key's files go once the server holds it
                start_http_server(self.settings.metrics_port, **tls)
        envoy = self.settings.data_path == "envoy"
        payloads = self.dataplane.payloads
        if payloads is not None:
            payloads.start()
            life.on_close(payloads.stop, name="payload processors")
            if envoy:  # Envoy forwards bodies the router never sees
                log.warning("payload processors are configured: the router serves every request itself "
                            "(the Python data path), not through Envoy")
                envoy = False
        life.on_close(self._cancel_expiry, name="fallback expiry")
        server = grpc.aio.server(options=[*SERVER_KEEPALIVE_OPTIONS, *message_size_options(self.settings.max_message_bytes)])
        server.add_generic_rpc_handlers(self.grpc_handlers())
        # upstream ModelMesh's management API, for tools that used it (registered methods win over the catch-all)
        mmesh = mmesh_api.add_to_server(server, self.channel, load_timeout_seconds=self.settings.default_timeout_seconds)
        if envoy:  # the slow path, on loopback: Envoy has the public ports
            port = bind(server, "127.0.0.1:0")
        else:
            port = bind(server, self.settings.grpc_address, self.settings.tls)
        self.grpc_port = port
        await server.start()
        rest = self._rest_server(internal=envoy) if self.settings.rest_port or envoy else None
        rest_socket = _loopback_socket() if envoy else None
        rest_task: asyncio.Task[None] | None = None

        async def stop_doors() -> None:
            if rest is not None:
                rest.should_exit = True  # the REST door drains beside gRPC's grace
            await server.stop(grace=2)
            await mmesh.close()
            if rest_task is not None:
                await asyncio.wait([rest_task])

        async def stop_envoy() -> None:
            if self.envoy is not None:
                await self.envoy.stop()

        # the route watcher outlives the doors' grace: calls still in flight keep fresh routes
        life.on_close(lambda: life.cancel("watch-routes", "report-usage"), name="route watcher and usage reports")
        life.on_close(stop_doors, name="gRPC and REST doors")
        life.on_close(stop_envoy, name="Envoy data path")
        life.on_close(self.health.stopping, name="readyz")
        if rest is not None:
            serving = rest.serve(sockets=[rest_socket] if rest_socket else None)
            rest_task = life.spawn("rest", serving, cancel_at_stop=False)
        if envoy:
            assert rest_socket is not None
            self.envoy = self._envoy_data_path(slow_grpc=port, slow_rest=rest_socket.getsockname()[1])
            await self.envoy.start(spawn=lambda name, coro: life.spawn(name, coro, cancel_at_stop=False))
        life.spawn("watch-routes", self._watch_routes(), cancel_at_stop=False)
        life.spawn("report-usage", self._report_usage(), cancel_at_stop=False)
        if self.envoy is not None:
            ports = await self.envoy.listener_ports()
            log.info("router: Envoy serves KServe v2 gRPC on :%d, REST on :%d; the Python slow path on :%d",
                     ports.get("ms-grpc", 0), ports.get("ms-rest", 0), port)
        else:
            log.info("router serving KServe v2 gRPC on :%d, REST on :%d", port, self.settings.rest_port)
        await life.wait()

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()

    async def _envoy_stats(self) -> str:
        """Envoy's own stats (`envoy_*`: per cluster, listener, connection) for /metrics; "" on
        the Python data path. Per-model figures come from Envoy's access log, not from these."""
        return await self.envoy.prometheus_stats() if self.envoy is not None else ""

    def _envoy_data_path(self, *, slow_grpc: int, slow_rest: int) -> EnvoyDataPath:
        from meshserve.router.envoy.datapath import EnvoyDataPath, EnvoySettings
        from meshserve.router.envoy.resources import TlsFiles

        s = self.settings
        host, _, grpc_port = s.grpc_address.rpartition(":")
        tls = s.tls
        files = TlsFiles(str(tls.cert_file), str(tls.key_file), str(tls.ca_file or "")) if tls.cert_file and tls.key_file else None
        workdir = s.envoy_workdir or Path(tempfile.mkdtemp(prefix=f"meshserve-envoy-{s.router_id}-"))
        return EnvoyDataPath(
            EnvoySettings(
                grpc_listen=(host.strip("[]") or "0.0.0.0", int(grpc_port)),
                rest_listen=(s.rest_host, s.rest_port),
                slow_grpc_address=f"127.0.0.1:{slow_grpc}",
                slow_rest_address=f"http://127.0.0.1:{slow_rest}",
                workdir=workdir,
                tls=files,
                shards=s.envoy_shards,
                delta=s.envoy_delta_xds,
                concurrency=s.envoy_concurrency,
                max_body_bytes=s.max_message_bytes + (1 << 20),
                request_timeout_s=s.default_timeout_seconds,
                hedge_after_s=s.envoy_hedge_after_seconds,
                namespace=s.namespace,
            ),
            on_served=self._served_by_envoy,
        )

    def _served_by_envoy(self, served: Served) -> None:
        """A request Envoy forwarded to a pod: counted as the Python path counts its own."""
        self.dataplane.usage[served.model] += 1
        metrics.ENVOY_FORWARDED.labels(served.protocol).inc()
        metrics.observe_request(
            model=served.model, protocol=served.protocol, method=served.method, code=served.code,
            seconds=served.seconds, invoke_seconds=served.upstream_seconds,
            request_bytes=served.request_bytes, response_bytes=served.response_bytes,
            vmodel=served.vmodel, pod=self._pod_of(served) if access.enabled() else None, path="envoy",
        )

    def _pod_of(self, served: Served) -> str:
        """The pod Envoy forwarded to: the one whose address the line names, else the pods of
        the cluster (the model's copies; Envoy picked one of them)."""
        endpoints = self.table.endpoints(served.model, now=self.clock())
        address = (lambda e: e.grpc_address) if served.protocol == "grpc" else (lambda e: e.rest_address)
        if served.upstream_host is not None:
            for endpoint in endpoints:
                if address(endpoint).removeprefix("http://").removeprefix("https://") == served.upstream_host:
                    return endpoint.pod_id
            return served.upstream_host
        return "|".join(sorted(e.pod_id for e in endpoints)) or served.cluster

    async def _watch_routes(self) -> None:
        """Follow the scheduler's route stream; reconnect with back-off and resync."""
        attempt = 0
        while True:
            try:
                async for update in self.scheduler.watch_routes():
                    self.table.apply(update, now=self.clock())
                    # room on new routes (a copy, a higher limit) goes to queued requests now
                    self.dataplane.routes_changed(r.model_id for r in update.routes)
                    if self.envoy is not None:
                        await self.envoy.apply(update, self.table)
                    if update.snapshot:
                        attempt = 0
                        metrics.ROUTE_SNAPSHOTS.inc()
                        kept = self._expire_fallbacks()
                        log.info(
                            "route snapshot: %d models, %d vmodels; kept as fallback: %d models, %d vmodels",
                            len(self.table.models), len(self.table.vmodels), kept.models, kept.vmodels,
                        )
                    elif self.table.fallback_models or self.table.fallback_vmodels:
                        # changes clear fallbacks as routes come back
                        _gauge_fallbacks(len(self.table.fallback_models), len(self.table.fallback_vmodels))
            except grpc.aio.AioRpcError as err:
                log.warning("route stream from scheduler broke: %s %s", err.code().name, err.details())
            attempt += 1
            await asyncio.sleep(backoff_delay(attempt=attempt, rand=random.random(), base=0.1, cap=5.0))

    def _expire_fallbacks(self) -> Fallbacks:
        """Forget expired fallback routes, publish how many are left, and come back when
        the next one expires."""
        now = self.clock()
        kept = self.table.expire(now=now)
        _gauge_fallbacks(kept.models, kept.vmodels)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if kept.next_expiry is not None:
            delay = kept.next_expiry - now + 0.05  # the loop's clock may run a little behind ours
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expire_fallbacks)
        return kept

    async def _report_usage(self) -> None:
        while True:
            await asyncio.sleep(self.settings.usage_report_interval_seconds)
            await self.flush_usage()

    async def flush_usage(self) -> None:
        """Report the requests counted since the last report (both data paths count into
        `dataplane.usage`) and start counting afresh."""
        usage, self.dataplane.usage = self.dataplane.usage, type(self.dataplane.usage)()
        await self.scheduler.report_usage(usage, interval_seconds=self.settings.usage_report_interval_seconds)
