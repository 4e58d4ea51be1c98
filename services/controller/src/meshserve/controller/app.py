"""Composition root of the controller in Kubernetes mode.

Builds the Kubernetes ApiClient (kubeconfig from `MESHSERVE_CONTROLLER_KUBECONFIG`, else the
in-cluster service account), the scheduler channel, the `Reconciler`, the health server
(`/healthz` always 200 while the loop runs, `/readyz` 200 once every informer has listed and
until shutdown starts) and the Prometheus endpoint. Owns signals and the shutdown order:
SIGTERM/SIGINT -> readyz false -> stop the queue and cancel informers/workers -> close the
scheduler channel -> close the ApiClient -> stop the health server.

Holds no logic of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from prometheus_client import start_http_server

from meshserve.common.grpcutil import open_channel
from meshserve.controller.kube import KubeApi, api_client_from
from meshserve.controller.scheduler_client import GrpcScheduler
from meshserve.controller.settings import ControllerSettings, Mode
from meshserve.controller.worker import Reconciler

log = logging.getLogger(__name__)


def create_health_app(*, is_ready: asyncio.Event, stopping: asyncio.Event) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok = is_ready.is_set() and not stopping.is_set()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class ControllerApp:
    def __init__(self, settings: ControllerSettings) -> None:
        if settings.mode is not Mode.KUBERNETES:
            raise ValueError("this entrypoint runs the controller in kubernetes mode only")
        self.settings = settings
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Idempotent: begin the shutdown (also what SIGTERM does)."""
        self._stop.set()

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        if s.metrics_port:
            start_http_server(s.metrics_port)
        api_client = await api_client_from(str(s.kubeconfig) if s.kubeconfig else None)
        channel = open_channel(s.scheduler_address, tls=s.scheduler_tls)
        reconciler = Reconciler(
            api=KubeApi(api_client), scheduler=GrpcScheduler(channel, timeout=s.scheduler_timeout_seconds),
            namespace=s.namespace, config_map_name=s.config_map_name, scheduler_address=s.scheduler_address,
            watch_timeout_seconds=s.watch_timeout_seconds,
        )
        runner = web.AppRunner(create_health_app(is_ready=reconciler.ready, stopping=self._stop))
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", s.health_port).start()
        task = asyncio.create_task(reconciler.run(), name="reconciler")
        stop_wait = asyncio.create_task(self._stop.wait(), name="stop-signal")
        log.info("controller watching namespace %s; scheduler %s", s.namespace, s.scheduler_address)
        try:
            await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stop.set()
            reconciler.shutdown()
            task.cancel()
            stop_wait.cancel()
            results = await asyncio.gather(task, stop_wait, return_exceptions=True)
            await channel.close()
            await api_client.close()
            await runner.cleanup()
        failure = results[0]
        if isinstance(failure, BaseException) and not isinstance(failure, asyncio.CancelledError):
            raise failure
