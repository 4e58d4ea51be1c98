"""Composition root of the scheduler: builds the store, service and servers, runs the
background loops under the leader lease (`store.lease`), and shuts everything down in
order.

Runs on the common skeleton (`meshserve.common.lifecycle`): `serve(life)` starts the metrics
port, the gRPC server (errors mapped by `ExceptionToStatusInterceptor`, a Redis failure
through the translator `api` registers), the admin API (with
`/healthz` + `/readyz` from `common.health`: ready while Redis and Postgres answer) as the task
`admin-api`, and the named tasks `registry-mirror` and `leader` (a task that dies is logged and
stops the scheduler). On SIGTERM: readyz false -> the loops cancelled -> the admin server told
to exit, gRPC stopped (grace 2 s), the admin server awaited -> the servicer, the service, the
puller clients, Redis, Postgres closed.

May import anything of the scheduler; nothing imports it but `__main__`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

import grpc
import uvicorn
from prometheus_client import start_http_server

from meshserve.common.grpcutil import SERVER_KEEPALIVE_OPTIONS, ExceptionToStatusInterceptor, bind
from meshserve.common.httputil import EmbeddedServer
from meshserve.common.lifecycle import Lifecycle
from meshserve.scheduler import metrics
from meshserve.scheduler.api import create_app, scheduler_health
from meshserve.scheduler.models import EvictionPolicy
from meshserve.scheduler.routing.hub import RouteHub
from meshserve.scheduler.server import SchedulerServicer, add_to_server
from meshserve.scheduler.service import SchedulerService
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.shift import ShiftDetector
from meshserve.scheduler.store.lease import LeaderLease
from meshserve.scheduler.store.live import LiveState
from meshserve.scheduler.store.registry import Registry

log = logging.getLogger(__name__)


class SchedulerApp:
    def __init__(self, settings: SchedulerSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.database_url)
        self.live = LiveState(settings.redis_url, prefix=settings.key_prefix)
        self.service = SchedulerService(settings=settings, registry=self.registry, live=self.live)
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.health = scheduler_health(self.service)
        self.grpc_port = 0
        # a Redis failure maps to 503 / UNAVAILABLE on both servers: `api` registers the
        # translator (`store.live.redis_unavailable`) when it is imported, above

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (for callers without their own `Lifecycle`)."""
        async with Lifecycle("scheduler") as life:
            life.handle_signals()
            await self.serve(life)

    async def serve(self, life: Lifecycle) -> None:
        """Start everything, then wait for `life` to stop; `life` closes what was started
        (closers run newest first: registered here in the reverse of the shutdown order)."""
        life.on_close(self.registry.close, name="registry (Postgres)")
        life.on_close(self.live.close, name="live state (Redis)")
        life.on_close(self.service.pullers.close, name="puller clients")
        life.on_close(self.service.close, name="service")
        metrics.configure(per_model=self.settings.per_model_metrics)
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port)
        admin_app = create_app(self.service, health=self.health)
        server = grpc.aio.server(
            options=SERVER_KEEPALIVE_OPTIONS, interceptors=[ExceptionToStatusInterceptor()]
        )
        # the hub checks the registry mirror before each table load: a table loaded from
        # a Redis that lost its data would send new copies' routes as removals (routing/hub.py)
        hub = RouteHub(self.live.routes, before_load=self.service.mirror.ensure)
        servicer = SchedulerServicer(self.service, hub=hub)
        add_to_server(servicer, server)
        life.on_close(servicer.close, name="gRPC servicer")
        self.grpc_port = bind(server, self.settings.grpc_address, self.settings.tls)
        await server.start()
        admin = EmbeddedServer(
            uvicorn.Config(
                admin_app,
                host=self.settings.admin_host,
                port=self.settings.admin_port,
                log_level="warning",
                lifespan="off",
            )
        )
        admin_task = life.spawn("admin-api", admin.serve(), cancel_at_stop=False)

        async def stop_servers() -> None:
            admin.should_exit = True  # the admin API drains beside gRPC's grace
            await server.stop(grace=2)
            await asyncio.wait([admin_task])

        life.on_close(stop_servers, name="gRPC and admin servers")
        life.on_close(self.health.stopping, name="readyz")
        life.spawn("registry-mirror", self._mirror_loop())
        life.spawn("leader", self._leader_loop())
        log.info("scheduler %s serving gRPC on :%d, admin on :%d", self.replica_id, self.grpc_port, self.settings.admin_port)
        await life.wait()

    async def _mirror_loop(self) -> None:
        """Keep Redis' copy of the registry complete: written at start, and again whenever
        its marker says Redis lost it or restarted (`store.mirror.RegistryMirror.ensure`,
        the coalesced call `report_pod` makes before adopting copies, so the two share a
        rebuild; the marker is in Redis, so a replica that finds it rewritten by another
        after a restart skips the rebuild)."""
        while True:
            try:
                await self.service.mirror.ensure()
            except Exception as err:
                log.warning("registry mirror sync failed: %s", err)
            await asyncio.sleep(2.0)

    async def _leader_loop(self) -> None:
        """Background duties run by one replica at a time, under a Redis lease."""
        lease = LeaderLease(
            self.live.redis,
            key=f"{self.settings.key_prefix}:leader",
            replica_id=self.replica_id,
            lease_ms=int(max(3.0, 3 * self.settings.heartbeat_interval_seconds) * 1000),
        )
        last_scale = 0.0
        shift: ShiftDetector | None = None   # a leader's own history: a new leader starts one
        while True:
            try:
                leader = await lease.hold()
                if not leader:
                    shift = None
                    metrics.current().model_counts.withdraw()   # published by one replica: the leader
                if leader:
                    await self.service.pods.remove_dead_pods()
                    await self.service.pods.sync_runtimes()
                    # lost copies re-placed, waiting models loaded, due retirements, retention
                    await self.service.housekeeping()
                    now = asyncio.get_running_loop().time()
                    if now - last_scale >= self.settings.scaling_interval_seconds:
                        last_scale = now
                        await self.service.scaler.scale_once()
                        await self.service.publish_model_counts()
                    # last: a failing step here must not hold up the duties above
                    if self.settings.shift_detection and self.settings.eviction_policy is EvictionPolicy.USAGE_WEIGHTED:
                        shift = shift or ShiftDetector(self.settings.shift_config())
                        await self.service.watch_for_shift(shift)
            except Exception as err:
                log.warning("leader loop error: %s", err)
            # a cancellation a duty swallowed still stops the loop (seen in CI: the loop, cancelled
            # at stop, went on sleeping; the cause was 3.11's asyncio.wait_for in a load wait,
            # now banned by ruff's TID251; this guard stays for a library that does the same)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(1.0)
