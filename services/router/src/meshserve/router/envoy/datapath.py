"""The Envoy data path as one object the router's composition root starts and feeds.

`EnvoyDataPath` owns the ADS server (loopback), Envoy's subprocess (supervised: restarted
with back-off when it exits; a new Envoy fetches everything from the ADS server again),
and the access-log reader that turns what Envoy served into usage and metrics. The router
passes every route update it applies to its `RoutingTable` to `apply`, so Envoy routes
what the Python path would route from its current table (fallback routes stay with the
Python path, which knows how to give up on them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from meshserve.common.backoff import backoff_delay
from meshserve.router import metrics
from meshserve.router.envoy import resources as res
from meshserve.router.envoy.ads import AdsServer, start_ads
from meshserve.router.envoy.process import EnvoyNotReady, EnvoyOptions, EnvoyProcess
from meshserve.router.envoy.script import route_script
from meshserve.router.envoy.usage import AccessLogReader, Served
from meshserve.router.table import Endpoints, RoutingTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnvoySettings:
    grpc_listen: tuple[str, int]
    rest_listen: tuple[str, int]
    slow_grpc_address: str
    slow_rest_address: str
    workdir: Path
    tls: res.TlsFiles | None = None
    shards: int = 256
    layout: res.Layout = "table"
    delta: bool = True
    concurrency: int = 1
    max_body_bytes: int = 64 << 20
    request_timeout_s: float = 120.0
    hedge_after_s: float = res.HEDGE_AFTER_S
    namespace: str = ""
    """The router's namespace: route.lua looks a name up as `<namespace>__<name>`."""


class EnvoyDataPath:
    def __init__(self, settings: EnvoySettings, *, on_served: Callable[[Served], None]) -> None:
        self.settings = settings
        access_log = settings.workdir / "access.log"
        self.config = res.DataPathConfig(
            slow_grpc_address=settings.slow_grpc_address,
            slow_rest_address=settings.slow_rest_address,
            lua_source=route_script(settings.shards, settings.layout, settings.namespace),
            grpc_listen=settings.grpc_listen,
            rest_listen=settings.rest_listen,
            max_body_bytes=settings.max_body_bytes,
            request_timeout_s=settings.request_timeout_s,
            hedge_after_s=settings.hedge_after_s,
            shards=settings.shards,
            layout=settings.layout,
            tls=settings.tls,
            access_log_path=str(access_log),
        )
        self.ads = AdsServer(self.config)
        self.access_log = AccessLogReader(
            access_log, on_served, slow_clusters=frozenset({res.slow_cluster("grpc"), res.slow_cluster("rest")}),
            slow_hosts=frozenset("{}:{}".format(*res.host_port(a)) for a in (settings.slow_grpc_address, settings.slow_rest_address)),
        )
        self._ads_server: grpc.aio.Server | None = None
        self.envoy: EnvoyProcess | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    async def start(self, *, spawn: Callable[[str, Coroutine[Any, Any, None]], asyncio.Task[None]] | None = None) -> None:
        """ADS server, access log, Envoy; returns once Envoy reports ready (its listeners
        come from the ADS server: they exist once the first push is ACKed). `spawn` runs the
        supervisor as the caller's named task (the router's Lifecycle: a supervisor that dies
        stops the router, so its own supervisor restarts it, instead of Envoy staying down)."""
        self.settings.workdir.mkdir(parents=True, exist_ok=True)
        self._ads_server, port = await start_ads(self.ads)
        await self.access_log.start()
        self.envoy = EnvoyProcess(
            EnvoyOptions(ads_port=port, workdir=self.settings.workdir, delta=self.settings.delta,
                         concurrency=self.settings.concurrency)
        )  # fmt: skip
        await self.envoy.start()
        await self.envoy.wait_ready(within=60)
        if spawn is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="envoy-supervisor")
        else:
            self._supervisor = spawn("envoy-supervisor", self._supervise())

    async def _supervise(self) -> None:
        """Restart Envoy when it exits (back-off 0.1 s doubling to 5 s, reset after a minute up)."""
        attempt = 0
        while not self._stopping:
            assert self.envoy is not None and self.envoy.proc is not None
            started = asyncio.get_running_loop().time()
            code = await self.envoy.proc.wait()
            if self._stopping:
                return
            if asyncio.get_running_loop().time() - started > 60:
                attempt = 0
            attempt += 1
            self.restarts += 1
            metrics.ENVOY_RESTARTS.inc()
            log.error("envoy exited with %s; restarting it (attempt %d):\n%s", code, attempt, self.envoy.log_tail(20))
            await asyncio.sleep(backoff_delay(attempt=attempt, rand=random.random(), base=0.1, cap=5.0))
            try:
                await self.envoy.start()
                await self.envoy.wait_ready(within=60)
            except EnvoyNotReady as err:
                log.error("envoy did not come back: %s", err)

    async def wait_synced(self) -> None:
        """Until Envoy has applied the current version (its listeners are up)."""
        await self.ads.wait_acked(self.ads.version)

    async def prometheus_stats(self) -> str:
        """Envoy's stats in Prometheus text format (`envoy_*` families), for the router's
        /metrics to append: "" while Envoy is not up."""
        if self.envoy is None or not self.envoy.admin_url:
            return ""
        try:
            return await self.envoy.prometheus_stats()
        except httpx.HTTPError:
            return ""

    async def listener_ports(self) -> dict[str, int]:
        assert self.envoy is not None
        return await self.envoy.listener_ports()

    async def apply(self, update: Any, table: RoutingTable) -> int:
        """Mirror one route update the router applied to `table`: a snapshot replaces what
        Envoy routes, a change is applied as a change. Returns the version pushed. Never
        raises: a change that cannot be applied is logged and the whole table is pushed
        instead (the Python path routes from `table` either way)."""
        try:
            return await self._apply(update, table)
        except Exception:
            log.exception("route update not applied to Envoy's resources; pushing the whole table")
            try:
                return await self.ads.update(dict(table.models), dict(table.vmodels))
            except Exception:
                log.exception("the whole table could not be pushed to Envoy either; it keeps its last routes")
                return self.ads.version

    async def _apply(self, update: Any, table: RoutingTable) -> int:
        if update.snapshot:
            return await self.ads.update(dict(table.models), dict(table.vmodels))
        return await self.ads.change(
            models={r.model_id: table.models.get(r.model_id, ()) for r in update.routes},
            removed_models=list(update.removed_models),
            vmodels={vm.vmodel_id: vm.model_id for vm in update.vmodels},
            removed_vmodels=list(update.removed_vmodels),
        )

    async def set_endpoints(self, model_id: str, endpoints: Endpoints) -> int:
        """Endpoints the data plane learned itself (a load it waited for): routed at once."""
        return await self.ads.change(models={model_id: tuple(endpoints)})

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self.envoy is not None:
            code = await self.envoy.stop()
            if code not in (0, None):
                log.warning("envoy exited with %s:\n%s", code, self.envoy.log_tail(20))
        await self.access_log.stop()
        if self._ads_server is not None:
            await self._ads_server.stop(None)
