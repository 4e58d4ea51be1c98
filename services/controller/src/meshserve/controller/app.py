"""Composition root of the controller (transport layer), in Kubernetes or local mode.

Kubernetes mode builds the Kubernetes ApiClient (kubeconfig from `MESHSERVE_CONTROLLER_KUBECONFIG`,
else the in-cluster service account); local mode (`MESHSERVE_CONTROLLER_MODE=local`) the client of
the scheduler's resource store (`local.py`) and a runtime backend (local processes, or nothing for
`runtime_provider=static`). Both: the scheduler channel, the `Reconciler` (fed by the scheduler's
route events too) with its `EventRecorder` (core/v1 Events in Kubernetes mode, log lines in local
mode), the health server (`meshserve.common.health`: `/healthz` always 200 while the loop runs,
`/readyz` 200 once every informer has listed and until shutdown starts) and the Prometheus
endpoint. Runs on the common skeleton (`meshserve.common.lifecycle`): the reconciler is the named
task `reconciler` (its failure is logged and stops the controller, exit code 1). Shutdown order:
SIGTERM/SIGINT -> readyz false -> stop the queue, cancel informers/workers -> close the runtime
backend and the local store client, or the ApiClient -> stop the health server -> close the
scheduler channel.

Holds no logic of its own: it may import every controller module and `meshserve.common`;
nothing imports it but `__main__`.
"""

from __future__ import annotations

import importlib
import logging
import socket
from typing import Any

from prometheus_client import start_http_server

from meshserve.common.grpcutil import open_channel
from meshserve.common.health import Health, HealthServer
from meshserve.common.lifecycle import Lifecycle
from meshserve.controller import kube
from meshserve.controller.events import KubeEventRecorder, LogEventRecorder
from meshserve.controller.finalizers import FINALIZER
from meshserve.controller.internal_tls import InternalTls
from meshserve.controller.kube import KubeApi, api_client_from
from meshserve.controller.kube_autoscale import PressureOptions, SchedulerAdmin
from meshserve.controller.local import (
    LocalInformers,
    LocalResourceApi,
    RecordingRuntimes,
    autoscaled,
)
from meshserve.controller.scheduler_client import GrpcScheduler
from meshserve.controller.settings import ControllerSettings, Mode, RuntimeProvider
from meshserve.controller.worker import Reconciler, RouterOptions

LOCAL_KINDS = (
    kube.INFERENCE_SERVICE, kube.PREDICTOR, kube.SERVING_RUNTIME, kube.CLUSTER_SERVING_RUNTIME, kube.CONFIG_MAP,
)
"""What the local store holds (no Deployments: the runtime backend; no Secrets: storage-config files)."""

log = logging.getLogger(__name__)


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
        self.health = Health()
        self.health_port = 0
        self._life: Lifecycle | None = None

    def stop(self) -> None:
        """Idempotent: begin the shutdown (also what SIGTERM does)."""
        if self._life is not None:
            self._life.stop()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (for callers without their own `Lifecycle`)."""
        async with Lifecycle("controller") as life:
            life.handle_signals()
            await self.serve(life)

    async def serve(self, life: Lifecycle) -> None:
        """Start everything, then wait for `life` to stop; `life` closes what was started."""
        self._life = life
        s = self.settings
        if s.metrics_port:
            start_http_server(s.metrics_port)
        channel = open_channel(s.scheduler_address, tls=s.scheduler_tls)
        life.on_close(channel.close, name="scheduler channel")
        scheduler = GrpcScheduler(channel, timeout=s.scheduler_timeout_seconds)
        if s.mode is Mode.LOCAL:
            token = s.admin_token.get_secret_value() if s.admin_token else None
            local_api = LocalResourceApi(s.admin_url, token=token)
            backend = local_runtime_backend(s)
            if s.runtime_provider is RuntimeProvider.PROCESS:
                # runtime pods scaled on model pressure between min-scale and max-scale (local.py)
                backend = autoscaled(backend, settings=s)
            reconciler = Reconciler(
                api=local_api, scheduler=scheduler,  # type: ignore[arg-type]
                namespace=s.namespace, config_map_name=s.config_map_name, scheduler_address=s.scheduler_address,
                kinds=LOCAL_KINDS, runtime_backend=backend,
                informer_runner=LocalInformers(local_api, watch_timeout_seconds=min(s.watch_timeout_seconds, 30)).run,
                change_feed=scheduler.watch_changes, resync_seconds=s.resync_seconds, events=LogEventRecorder(),
            )
            where = f"the local resource store at {s.admin_url} (runtime pods: {s.runtime_provider.value})"
            closers = [(local_api.close, "resource store client"), (backend.close, "runtime backend")]
        else:
            api_client = await api_client_from(str(s.kubeconfig) if s.kubeconfig else None)
            kube_api = KubeApi(api_client)
            token = s.admin_token.get_secret_value() if s.admin_token else None
            # runtime pods scaled on model pressure between min-scale and max-scale (kube_autoscale.py)
            pressure_admin = SchedulerAdmin(s.admin_url, token=token) if s.autoscale else None
            reconciler = Reconciler(
                api=kube_api, scheduler=scheduler,
                namespace=s.namespace, config_map_name=s.config_map_name, scheduler_address=s.scheduler_address,
                watch_timeout_seconds=s.watch_timeout_seconds, change_feed=scheduler.watch_changes,
                resync_seconds=s.resync_seconds,
                events=KubeEventRecorder(kube_api, namespace=s.namespace, instance=socket.gethostname()),
                finalizer=FINALIZER, cluster_scope=not s.namespace_scope,
                router=RouterOptions(image=s.router_image, replicas=s.router_replicas),
                pressure=PressureOptions.from_settings(s) if pressure_admin is not None else None,
                pressure_admin=pressure_admin,
                internal_tls=InternalTls(s.internal_tls_secret, s.internal_tls_server_name) if s.internal_tls_secret else None,
            )
            where = "the Kubernetes API" + ("" if s.namespace_scope else
                                            " (cluster scope: and every namespace labelled modelmesh-enabled=true)")
            closers = [(api_client.close, "Kubernetes ApiClient")]
            if pressure_admin is not None:
                closers.append((pressure_admin.close, "scheduler admin client"))
        self.health.add_check("informers", reconciler.ready.is_set)
        health_server = HealthServer(self.health, port=s.health_port)
        await health_server.start()
        self.health_port = health_server.port
        life.on_close(health_server.stop, name="health server")
        for close, name in closers:  # closed in reverse: the first listed goes last
            life.on_close(close, name=name)
        life.spawn("reconciler", reconciler.run())
        log.info("controller watching namespace %s in %s; scheduler %s", s.namespace, where, s.scheduler_address)
        await life.wait()
        self.health.stopping()
        reconciler.shutdown()  # then `life` cancels the reconciler and runs the closers
