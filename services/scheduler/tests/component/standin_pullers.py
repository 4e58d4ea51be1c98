"""Runtime pods' management ends for the scheduler's component tests, on real sockets on
127.0.0.1: a stand-in puller (the meshserve.v1.ModelRuntime gRPC service, loading nothing
but answering as a puller does and remembering what it was asked), a dead pod (a port
nothing listens on: connections are refused) and a hung pod (a socket that listens but is
never served: the connection is accepted by the kernel, no answer ever comes, as for a
stopped process)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from meshserve.common.proto.meshserve.v1 import runtime_pb2, runtime_pb2_grpc

MIB = 1 << 20

LABELS = ["rt:{runtime}", "mt:sklearn", "mt:sklearn:0", "pv:grpc-v2", "pv:v2"]


@dataclass
class StandInPuller(runtime_pb2_grpc.ModelRuntimeServicer):
    """Answers LoadModel with `size` bytes (measured unless `measured` is False; `disk` as the
    files' size) and records loads and unloads; RuntimeStatus answers READY."""

    size: int = 2 * MIB
    measured: bool = True
    disk: int = 0
    sizes: dict[str, int] = field(default_factory=dict)   # model id -> size of its next loads
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    address: str = ""

    async def LoadModel(self, request: Any, context: Any) -> runtime_pb2.LoadModelResponse:
        self.loads.append(request.model_id)
        return runtime_pb2.LoadModelResponse(
            size_in_bytes=self.sizes.get(request.model_id, self.size), measured=self.measured, disk_size_bytes=self.disk
        )

    async def UnloadModel(self, request: Any, context: Any) -> runtime_pb2.UnloadModelResponse:
        self.unloads.append(request.model_id)
        return runtime_pb2.UnloadModelResponse()

    async def PredictModelSize(self, request: Any, context: Any) -> runtime_pb2.PredictModelSizeResponse:
        return runtime_pb2.PredictModelSizeResponse(size_in_bytes=self.size)

    async def RuntimeStatus(self, request: Any, context: Any) -> runtime_pb2.RuntimeStatusResponse:
        return runtime_pb2.RuntimeStatusResponse(status=runtime_pb2.RuntimeStatusResponse.READY)


@contextlib.asynccontextmanager
async def stand_in_puller(**fields: Any) -> AsyncIterator[StandInPuller]:
    puller = StandInPuller(**fields)
    server = grpc.aio.server()
    runtime_pb2_grpc.add_ModelRuntimeServicer_to_server(puller, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    puller.address = f"127.0.0.1:{port}"
    try:
        yield puller
    finally:
        await server.stop(grace=None)


def dead_address() -> str:
    """A port that was free a moment ago and that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@contextlib.contextmanager
def hung_address() -> Iterator[str]:
    """A listening socket nobody serves: connections are accepted, nothing ever answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


def pod_fields(pod_id: str, *, runtime: str, management_address: str, **fields: Any) -> dict[str, Any]:
    """A pod's heartbeat fields as the gRPC ReportPod handler passes them to `report_pod`."""
    return {
        "pod_id": pod_id,
        "runtime": runtime,
        "labels": [label.format(runtime=runtime) for label in LABELS],
        "management_address": management_address,
        "grpc_address": management_address,
        "rest_address": f"http://{management_address}",
        "capacity": 64 * MIB,
        "used": 0,
        "max_loading": 2,
        "default_size": 3 * MIB,
        **fields,
    }
