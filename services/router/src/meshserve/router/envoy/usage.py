"""What Envoy served, from its access log: per-model usage and the router's request metrics.

Requests Envoy forwards straight to a pod never reach the Python router, yet the
scheduler's placement needs their counts (usage reports) and operators the router's
metrics. Envoy writes one short line per request (resources.ACCESS_LOG_FORMAT) into a
FIFO this module reads on the event loop: about a microsecond of Python per request, no
protobuf decoding (a gRPC access-log service would cost ten times that). Lines of
requests that went to the slow path are skipped: the Python router counted them itself.

`parse_line` is pure; `AccessLogReader` owns the FIFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GRPC_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
GRPC_PREFIX = "/inference.GRPCInferenceService/"
REST_METHODS = {"infer": "ModelInfer", "ready": "ModelReady"}


@dataclass(frozen=True)
class Served:
    """One request Envoy forwarded to a pod."""

    model: str
    protocol: str  # "grpc" or "rest"
    method: str  # the v2 method (ModelInfer, ModelMetadata, ...), as the Python doors label it
    code: str  # gRPC status name, or the HTTP status
    seconds: float
    request_bytes: int | None = None  # body bytes (gRPC: with its 5-byte frame header)
    response_bytes: int | None = None
    upstream_seconds: float | None = None  # to and from the pod: the model server's share
    cluster: str = ""  # the Envoy cluster of the model's copies
    upstream_host: str | None = None  # the host:port Envoy chose (%UPSTREAM_HOST%)
    vmodel: str | None = None  # the vmodel the request named (route.lua's dynamic metadata)


def _count(field: str) -> int | None:
    return int(field) if field.isdigit() else None


def parse_line(line: str, *, slow_clusters: frozenset[str], slow_hosts: frozenset[str] = frozenset()) -> Served | None:
    """A line of ACCESS_LOG_FORMAT -> what was served; None for a slow-path request (its
    cluster, or the host a failover cluster chose: the Python router counts those itself) or
    a line that is not one (the log is Envoy's, but a malformed line must not stop reading)."""
    parts = line.split()
    if len(parts) != 11:
        return None
    cluster, model, path, http_status, grpc_status, duration, received, sent, upstream, host, vmodel = parts
    if cluster in slow_clusters or cluster == "-" or model == "-" or host in slow_hosts:
        return None
    try:
        seconds = int(duration) / 1e6
    except ValueError:
        return None
    upstream_us = _count(upstream)
    sizes = {
        "request_bytes": _count(received),
        "response_bytes": _count(sent),
        "upstream_seconds": None if upstream_us is None else upstream_us / 1e6,
        "cluster": cluster,
        "upstream_host": None if host == "-" else host,
        "vmodel": None if vmodel == "-" else vmodel,
    }
    if path.startswith(GRPC_PREFIX):
        method = path[len(GRPC_PREFIX):]
        code = GRPC_CODES[int(grpc_status)] if grpc_status.isdigit() and int(grpc_status) < len(GRPC_CODES) else "UNKNOWN"
        if grpc_status == "-":  # no grpc-status: the HTTP answer says what happened
            code = "OK" if http_status == "200" else "UNAVAILABLE"
        return Served(model, "grpc", method, code, seconds, **sizes)
    tail = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    method = REST_METHODS.get(tail, "ModelMetadata" if tail == model else "unknown")  # as rest.py names them
    return Served(model, "rest", method, http_status, seconds, **sizes)


class _Lines(asyncio.Protocol):
    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            self.on_line(line.decode(errors="replace"))


class AccessLogReader:
    """A FIFO at `path` that Envoy's file access logger writes to. It is opened for reading
    (non-blocking) before Envoy starts, so Envoy's open for writing does not block; it is
    held open on our side (a writer of our own) so that an Envoy restart does not end it."""

    def __init__(
        self, path: Path, on_served: Callable[[Served], None], *, slow_clusters: frozenset[str],
        slow_hosts: frozenset[str] = frozenset(),
    ) -> None:
        self.path = path
        self.on_served = on_served
        self.slow_clusters = slow_clusters
        self.slow_hosts = slow_hosts
        self._transport: asyncio.ReadTransport | None = None
        self._keep_open = -1

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(self.path.stat().st_mode):
                self.path.unlink()
        if not self.path.exists():
            os.mkfifo(self.path, 0o600)
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._keep_open = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        pipe = os.fdopen(fd, "rb", buffering=0)
        self._transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: _Lines(self._line), pipe)

    def _line(self, line: str) -> None:
        served = parse_line(line, slow_clusters=self.slow_clusters, slow_hosts=self.slow_hosts)
        if served is not None:
            self.on_served(served)

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._keep_open >= 0:
            os.close(self._keep_open)
            self._keep_open = -1
        self.path.unlink(missing_ok=True)
