"""GrpcScheduler against a real grpc.aio server on 127.0.0.1:0 (a scripted Scheduler servicer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from meshserve.common.errors import AlreadyExists, Unavailable
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as pbg
from meshserve.controller.scheduler_client import GrpcScheduler
from meshserve.controller.specs import ModelSpec
from meshserve.controller.status import ModelStatusCode, VModelStatusCode


class Scripted(pbg.SchedulerServicer):
    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.vmodels: dict[str, str] = {}   # vmodel -> owner

    async def SetVModel(self, request: pb.SetVModelRequest, context: grpc.aio.ServicerContext) -> pb.VModelStatusInfo:
        self.requests.append(request)
        owner = self.vmodels.setdefault(request.vmodel_id, request.owner)
        if owner != request.owner:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "vmodel owned by another source")
        copy = pb.CopyInfo(location="pod-a", copy_status=pb.LOADED, time_ms=5)
        status = pb.ModelStatusInfo(status=pb.LOADED, copies=[copy])
        return pb.VModelStatusInfo(status=pb.DEFINED, active_model_id=request.target_model_id,
                                   target_model_id=request.target_model_id, active_model_status=status, owner=owner)

    async def GetVModelStatus(self, request: pb.GetVModelStatusRequest, context: grpc.aio.ServicerContext) -> pb.VModelStatusInfo:
        return pb.VModelStatusInfo(status=pb.VMODEL_NOT_FOUND)

    async def DeleteVModel(self, request: pb.DeleteVModelRequest, context: grpc.aio.ServicerContext) -> pb.DeleteVModelResponse:
        if request.vmodel_id not in self.vmodels:
            await context.abort(grpc.StatusCode.NOT_FOUND, "vmodel not found")
        del self.vmodels[request.vmodel_id]
        return pb.DeleteVModelResponse()


@pytest.fixture
async def scheduler() -> AsyncIterator[tuple[Scripted, GrpcScheduler]]:
    servicer = Scripted()
    server = grpc.aio.server()
    pbg.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, GrpcScheduler(channel, timeout=5)
    await server.stop(grace=None)


async def test_set_get_delete_vmodel(scheduler: tuple[Scripted, GrpcScheduler]) -> None:
    servicer, client = scheduler
    spec = ModelSpec(model_type="sklearn", storage_key="localMinIO", storage_path="sklearn/mnist-svm.joblib",
                     storage_params=(("bucket", "b"), ("type", "s3")))
    view = await client.set_vmodel(vmodel_id="m", owner="isvc", model_id="m__isvc-0123456789", spec=spec, load_now=True)
    assert view.status is VModelStatusCode.DEFINED and view.active is not None
    assert view.active.status is ModelStatusCode.LOADED and view.active.copies[0].location == "pod-a"
    sent = servicer.requests[0]
    assert sent.auto_delete_target_model and sent.load_now and sent.model_info.storage_params["bucket"] == "b"
    assert await client.get_vmodel_status(vmodel_id="m", owner="isvc") is None
    with pytest.raises(AlreadyExists):
        await client.set_vmodel(vmodel_id="m", owner="ksp", model_id="m__ksp-1", spec=spec, load_now=False)
    await client.delete_vmodel(vmodel_id="m", owner="isvc")
    await client.delete_vmodel(vmodel_id="m", owner="isvc")   # idempotent


async def test_unreachable_scheduler_is_unavailable() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(Unavailable):
            await GrpcScheduler(channel, timeout=2).get_vmodel_status(vmodel_id="m", owner="isvc")
