"""Composition root of the router: gRPC front door, route watcher, usage reporter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal

import grpc
from prometheus_client import start_http_server

from meshserve.common.grpcutil import bind, message_size_options, open_channel
from meshserve.common.proto.meshserve.v1 import scheduler_pb2, scheduler_pb2_grpc
from meshserve.router.dataplane import DataPlane
from meshserve.router.server import InferenceHandler
from meshserve.router.settings import RouterSettings
from meshserve.router.table import RoutingTable

log = logging.getLogger(__name__)


class RouterApp:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.table = RoutingTable()
        self.channel = open_channel(settings.scheduler_address, tls=settings.scheduler_tls)
        self.scheduler = scheduler_pb2_grpc.SchedulerStub(self.channel)
        self.dataplane = DataPlane(settings=settings, table=self.table, scheduler=self.scheduler)
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port)
        server = grpc.aio.server(options=message_size_options(self.settings.max_message_bytes))
        server.add_generic_rpc_handlers((InferenceHandler(self.dataplane),))
        port = bind(server, self.settings.grpc_address, self.settings.tls)
        await server.start()
        tasks = [asyncio.create_task(self._watch_routes()), asyncio.create_task(self._report_usage())]
        log.info("router serving KServe v2 gRPC on :%d", port)
        await self._stop.wait()
        await server.stop(grace=2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.dataplane.close()
        await self.channel.close()

    async def _watch_routes(self) -> None:
        """Follow the scheduler's route stream; reconnect with back-off and resync."""
        attempt = 0
        while True:
            try:
                stream = self.scheduler.WatchRoutes(scheduler_pb2.WatchRoutesRequest(router_id=self.settings.router_id))
                async for update in stream:
                    self.table.apply(update)
                    if update.snapshot:
                        attempt = 0
                        log.info("route snapshot: %d models, %d vmodels", len(self.table.models), len(self.table.vmodels))
            except grpc.aio.AioRpcError as err:
                log.warning("route stream from scheduler broke: %s %s", err.code().name, err.details())
            attempt += 1
            delay = min(5.0, 0.1 * 2 ** min(attempt, 6)) * (0.5 + random.random() / 2)
            await asyncio.sleep(delay)

    async def _report_usage(self) -> None:
        while True:
            await asyncio.sleep(self.settings.usage_report_interval_seconds)
            usage, self.dataplane.usage = self.dataplane.usage, type(self.dataplane.usage)()
            if not usage:
                continue
            request = scheduler_pb2.ReportUsageRequest(
                router_id=self.settings.router_id,
                usage=[scheduler_pb2.ModelUsage(model_id=m, requests=n) for m, n in usage.items()],
                interval_ms=int(self.settings.usage_report_interval_seconds * 1000),
            )
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.scheduler.ReportUsage(request, timeout=5)
