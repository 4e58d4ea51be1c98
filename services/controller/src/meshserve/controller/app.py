"""Composition root of the controller, in Kubernetes or local mode.

Kubernetes mode builds the Kubernetes ApiClient (kubeconfig from `MESHSERVE_CONTROLLER_KUBECONFIG`,
else the in-cluster service account); local mode (`MESHSERVE_CONTROLLER_MODE=local`) the client of
the scheduler's resource store (`local.py`) and a runtime backend (local processes, or nothing for
`runtime_provider=static`). Both: the scheduler channel, the `Reconciler` (fed by the scheduler's
route events too) with its `EventRecorder` (core/v1 Events in Kubernetes mode, log lines in local
mode), the health server
(`/healthz` always 200 while the loop runs, `/readyz` 200 once every informer has listed and
until shutdown starts) and the Prometheus endpoint. Owns signals and the shutdown order:
SIGTERM/SIGINT -> readyz false -> stop the queue and cancel informers/workers -> close the
scheduler channel -> close the ApiClient -> stop the health server.

Holds no logic of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import start_http_server

from meshserve.common.grpcutil import open_channel
from meshserve.controller import kube
from meshserve.controller.events import KubeEventRecorder, LogEventRecorder
from meshserve.controller.finalizers import FINALIZER
from meshserve.controller.kube import KubeApi, api_client_from
from meshserve.controller.local import LocalInformers, LocalResourceApi, RecordingRuntimes
from meshserve.controller.scheduler_client import GrpcScheduler
from meshserve.controller.settings import ControllerSettings, Mode, RuntimeProvider
from meshserve.controller.worker import Reconciler

LOCAL_KINDS = (
    kube.INFERENCE_SERVICE, kube.PREDICTOR, kube.SERVING_RUNTIME, kube.CLUSTER_SERVING_RUNTIME, kube.CONFIG_MAP,
)
"""What the local store holds (no Deployments: the runtime backend; no Secrets: storage-config files)."""

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


def local_runtime_backend(settings: ControllerSettings) -> Any:
    """The runtime backend of local mode: `static` records, `process` loads `settings.local_provider`
    (`module:factory`, by name: the process code lives with the local stack, outside this package)."""
    if settings.runtime_provider is RuntimeProvider.STATIC:
        return RecordingRuntimes()
    module_name, _, attr = settings.local_provider.partition(":")
    factory = getattr(importlib.import_module(module_name), attr or "ProcessRuntimes")
    return factory(settings)


class ControllerApp:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings.effective()
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
        channel = open_channel(s.scheduler_address, tls=s.scheduler_tls)
        scheduler = GrpcScheduler(channel, timeout=s.scheduler_timeout_seconds)
        closers: list[Callable[[], Awaitable[Any]]] = []
        if s.mode is Mode.LOCAL:
            token = s.admin_token.get_secret_value() if s.admin_token else None
            local_api = LocalResourceApi(s.admin_url, token=token)
            closers.append(local_api.close)
            backend = local_runtime_backend(s)
            closers.insert(0, backend.close)
            reconciler = Reconciler(
                api=local_api, scheduler=scheduler,  # type: ignore[arg-type]
                namespace=s.namespace, config_map_name=s.config_map_name, scheduler_address=s.scheduler_address,
                kinds=LOCAL_KINDS, runtime_backend=backend,
                informer_runner=LocalInformers(local_api, watch_timeout_seconds=min(s.watch_timeout_seconds, 30)).run,
                change_feed=scheduler.watch_changes, resync_seconds=s.resync_seconds, events=LogEventRecorder(),
            )
            where = f"the local resource store at {s.admin_url} (runtime pods: {s.runtime_provider.value})"
        else:
            api_client = await api_client_from(str(s.kubeconfig) if s.kubeconfig else None)
            closers.append(api_client.close)
            kube_api = KubeApi(api_client)
            reconciler = Reconciler(
                api=kube_api, scheduler=scheduler,
                namespace=s.namespace, config_map_name=s.config_map_name, scheduler_address=s.scheduler_address,
                watch_timeout_seconds=s.watch_timeout_seconds, change_feed=scheduler.watch_changes,
                resync_seconds=s.resync_seconds,
                events=KubeEventRecorder(kube_api, namespace=s.namespace, instance=socket.gethostname()),
                finalizer=FINALIZER,
            )
            where = "the Kubernetes API"
        runner = web.AppRunner(create_health_app(is_ready=reconciler.ready, stopping=self._stop))
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", s.health_port).start()
        task = asyncio.create_task(reconciler.run(), name="reconciler")
        stop_wait = asyncio.create_task(self._stop.wait(), name="stop-signal")
        log.info("controller watching namespace %s in %s; scheduler %s", s.namespace, where, s.scheduler_address)
        try:
            await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stop.set()
            reconciler.shutdown()
            task.cancel()
            stop_wait.cancel()
            results = await asyncio.gather(task, stop_wait, return_exceptions=True)
            for close in closers:
                with contextlib.suppress(Exception):
                    await close()
            await channel.close()
            await runner.cleanup()
        failure = results[0]
        if isinstance(failure, BaseException) and not isinstance(failure, asyncio.CancelledError):
            raise failure
