"""Composition root of the puller (transport layer): waits for its model server, purges it,
serves the ModelRuntime API and reports the pod to the scheduler (register + heartbeat).

Runs on the common skeleton (`meshserve.common.lifecycle`): `serve(life)` starts `/healthz` +
`/readyz` (`health_port`), the metrics port, the gRPC server (errors mapped by
`ExceptionToStatusInterceptor`) and the named task `heartbeat`; on SIGTERM the closers run in
reverse order: readyz false -> goodbye to the scheduler -> gRPC stop (grace 2 s) -> health
server -> the model-server adapter. Holds no logic of its own: it may import every puller module
and `meshserve.common`; nothing imports it but `__main__`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time

import grpc
from prometheus_client import REGISTRY, start_http_server

from meshserve.common.backoff import backoff_delay
from meshserve.common.errors import MeshError
from meshserve.common.grpcutil import (
    SERVER_KEEPALIVE_OPTIONS,
    ExceptionToStatusInterceptor,
    bind,
    open_channel,
)
from meshserve.common.health import Health, HealthServer
from meshserve.common.labels import parse_formats, runtime_labels
from meshserve.common.lifecycle import Lifecycle
from meshserve.common.proto.meshserve.v1 import runtime_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from meshserve.puller.adapter import MLServerAdapter, ModelServerAdapter, TritonAdapter
from meshserve.puller.memory import MemoryProbe
from meshserve.puller.metrics import MODEL_SERVER_RSS, Copy, InstanceCollector
from meshserve.puller.metrics_tls import metrics_tls
from meshserve.puller.ovms_adapter import OVMSAdapter
from meshserve.puller.ovms_layout import CONFIG_FILE as OVMS_CONFIG_FILE
from meshserve.puller.server import ModelRuntimeServicer
from meshserve.puller.service import PullerService
from meshserve.puller.settings import PullerSettings
from meshserve.puller.spi_adapter import SpiAdapter, grpc_target

log = logging.getLogger(__name__)


class PullerApp:
    def __init__(self, settings: PullerSettings) -> None:
        self.settings = settings
        self.adapter: ModelServerAdapter
        if settings.model_server_kind == "triton":
            self.adapter = TritonAdapter(
                rest_url=settings.model_server_rest, backends_dir=settings.model_server_backends_dir,
                keras_python=settings.keras_converter_python or sys.executable,
            )
        elif settings.model_server_kind == "mlserver":
            self.adapter = MLServerAdapter(rest_url=settings.model_server_rest)
        elif settings.model_server_kind == "ovms":  # OpenVINO Model Server, through its config file
            self.adapter = OVMSAdapter(
                rest_url=settings.model_server_rest,
                config_path=settings.ovms_config_path or settings.model_dir / OVMS_CONFIG_FILE,
                unload_timeout=settings.load_timeout_seconds,
            )
        elif settings.model_server_kind == "spi":  # a runtime serving mmesh.ModelRuntime itself
            try:
                self.adapter = SpiAdapter(endpoint=settings.model_server_endpoint)
                if settings.model_server_grpc.startswith("port:"):  # grpcDataEndpoint form
                    settings.model_server_grpc = grpc_target(settings.model_server_grpc)
            except MeshError as err:
                raise SystemExit(f"MESHSERVE_PULLER_MODEL_SERVER_ENDPOINT / _GRPC: {err.message}") from err
        else:
            raise SystemExit(f"MESHSERVE_PULLER_MODEL_SERVER_KIND={settings.model_server_kind!r}: use mlserver, triton, ovms or spi")
        if settings.storage_helper_disabled and settings.model_server_kind != "spi":
            raise SystemExit("MESHSERVE_PULLER_STORAGE_HELPER_DISABLED needs MESHSERVE_PULLER_MODEL_SERVER_KIND=spi")
        self.memory = MemoryProbe(
            pid_file=settings.model_server_pid_file,
            metrics_url=settings.model_server_metrics_url,
            process_pattern=settings.model_server_process,
        )
        self.service = PullerService(settings=settings, adapter=self.adapter, memory=self.memory)
        self.started_ms = int(time.time() * 1000)
        self.port = 0
        self.health = Health()
        self._serving = False
        self.health.add_check("modelruntime", lambda: self._serving)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (for callers without their own `Lifecycle`)."""
        async with Lifecycle("puller") as life:
            life.handle_signals()
            await self.serve(life)

    async def serve(self, life: Lifecycle) -> None:
        """Start everything, then wait for `life` to stop; `life` closes what was started."""
        life.on_close(self.adapter.close, name="model-server adapter")
        if self.settings.health_port:
            health_server = HealthServer(self.health, port=self.settings.health_port)
            await health_server.start()
            life.on_close(health_server.stop, name="health server")
        if self.settings.metrics_port:
            REGISTRY.register(InstanceCollector(self._instance))
            with metrics_tls(self.settings) as tls:  # a generated key's files go once the server holds it
                start_http_server(self.settings.metrics_port, **tls)
        if self.settings.keras_converter_prestart and isinstance(self.adapter, TritonAdapter):
            # beside the model server's start; a keras load waits for it (the converter's lock)
            life.spawn("keras-prestart", self.adapter.keras.prestart(), may_finish=True)
        if not await self._wait_for_model_server(life):
            return
        self._use_runtime_limits()
        await self.service.purge()
        if self.settings.triton_prestart_formats and isinstance(self.adapter, TritonAdapter):
            await self._prestart_frameworks(self.adapter)
        server = grpc.aio.server(options=SERVER_KEEPALIVE_OPTIONS, interceptors=[ExceptionToStatusInterceptor()])
        runtime_pb2_grpc.add_ModelRuntimeServicer_to_server(ModelRuntimeServicer(self.service), server)
        self.port = bind(server, self.settings.listen_address, self.settings.tls)
        await server.start()
        life.on_close(lambda: server.stop(grace=2), name="gRPC server")
        life.on_close(self._say_goodbye, name="goodbye to the scheduler")
        life.on_close(self.health.stopping, name="readyz")
        self._serving = True
        log.info("puller %s serving ModelRuntime on :%d", self.settings.pod_id, self.port)
        life.spawn("heartbeat", self._heartbeat_loop())
        await life.wait()

    def _instance(self) -> tuple[list[Copy], int, float]:
        """The pod's copies for its instance metrics (called on the metrics server's thread)."""
        held = list(self.service.loaded.values())
        return [Copy(m.size_bytes, m.measured, m.loaded_at) for m in held], self.settings.capacity_bytes, time.time()

    async def _prestart_frameworks(self, adapter: TritonAdapter) -> None:
        """The warm-up model, measured: what it takes is memory models cannot have, so it
        comes off the capacity this pod reports."""
        formats = [f.strip() for f in self.settings.triton_prestart_formats.split(",") if f.strip()]
        before = await self.memory.snapshot()
        warmed = await adapter.prestart_frameworks(
            formats, repository=self.settings.model_dir, timeout=self.settings.load_timeout_seconds
        )
        grown = self.memory.growth(before, await self.memory.snapshot()) if warmed else None
        if grown is not None and grown > 0:
            self.settings.capacity_bytes = max(self.settings.capacity_bytes - grown, 0)
            log.info("the warm-up of %s takes %d MiB; capacity for models now %d MiB",
                     ", ".join(warmed), grown >> 20, self.settings.capacity_bytes >> 20)

    def _use_runtime_limits(self) -> None:
        """Kind spi: the limits the runtime's runtimeStatus gave replace the puller's own
        (ModelMesh's rule); they reach the scheduler with the next PodReport."""
        if not isinstance(self.adapter, SpiAdapter) or self.adapter.info is None:
            return
        overrides = self.adapter.info.puller_overrides()
        for name, value in overrides.items():
            setattr(self.settings, name, value)
        if "max_loading_concurrency" in overrides:
            self.service.set_max_loading_concurrency(self.settings.max_loading_concurrency)

    async def _wait_for_model_server(self, life: Lifecycle) -> bool:
        """Poll the model server until it is ready (true) or the service stops (false)."""
        attempt = 0
        while not await self.adapter.ready():
            delay = backoff_delay(attempt=attempt, rand=random.random(), base=0.1, cap=1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await life.wait()
            if life.stopping:
                return False
            attempt += 1
        return True

    def _report(self, used: int) -> scheduler_pb2.PodReport:
        s = self.settings
        labels = runtime_labels(
            runtime=s.runtime,
            formats=parse_formats(s.supported_formats),
            protocol_versions=[p for p in s.protocol_versions.split(",") if p],
        )
        host = s.listen_address.rsplit(":", 1)[0]
        advertise = s.advertise_address or f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '') else host}:{self.port}"
        return scheduler_pb2.PodReport(
            pod_id=s.pod_id,
            runtime=s.runtime,
            labels=sorted(labels),
            management_address=advertise,
            grpc_address=s.model_server_advertise_grpc or s.model_server_grpc,
            rest_address=s.model_server_advertise_rest or s.model_server_rest,
            capacity_bytes=s.capacity_bytes,
            used_bytes=used,
            max_loading_concurrency=s.max_loading_concurrency,
            default_model_size_bytes=s.default_model_size_bytes,
            loaded_model_ids=sorted(self.service.loaded),
            started_at_ms=self.started_ms,
            max_concurrency_per_model=s.limit_per_model_concurrency,
        )

    async def _say_goodbye(self) -> None:
        """Tell the scheduler this pod is going, so routes drop it now, not after a timeout."""
        channel = open_channel(self.settings.scheduler_address, tls=self.settings.scheduler_tls)
        try:
            report = self._report(0)
            report.leaving = True
            await scheduler_pb2_grpc.SchedulerStub(channel).ReportPod(report, timeout=2)
        except grpc.aio.AioRpcError as err:
            log.info("could not tell the scheduler we are leaving: %s", err.code().name)
        finally:
            await channel.close()

    async def _heartbeat_loop(self) -> None:
        channel = open_channel(self.settings.scheduler_address, tls=self.settings.scheduler_tls)
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        interval = self.settings.heartbeat_interval_seconds
        try:
            while True:
                try:
                    if not await self.service.sync_with_model_server():
                        # model server down: no heartbeat, so the scheduler stops routing here
                        log.warning("model server not ready; skipping heartbeat")
                        await asyncio.sleep(min(interval, 1.0))
                        continue
                    used = await self.memory.rss_bytes() or 0
                    MODEL_SERVER_RSS.set(used)
                    response = await stub.ReportPod(self._report(used), timeout=5)
                    if response.heartbeat_interval_ms:
                        interval = response.heartbeat_interval_ms / 1000
                except grpc.aio.AioRpcError as err:
                    log.warning("heartbeat to scheduler failed: %s %s", err.code().name, err.details())
                    interval = min(interval, 1.0)
                await asyncio.sleep(interval)
        finally:
            await channel.close()
