"""A pod's per-copy concurrency limit (PodReport.max_concurrency_per_model, from the runtime's
perModelConcurrencyLimit) on its routes, and UnregisterModel of a model a vmodel refers to;
over the scheduler's real gRPC server with real Redis and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from meshserve.common.grpcutil import ExceptionToStatusInterceptor
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc
from meshserve.scheduler.routing.hub import load_table
from meshserve.scheduler.server import SchedulerServicer, add_to_server
from meshserve.scheduler.service import SchedulerService


@pytest.fixture
async def stub(service: SchedulerService) -> AsyncIterator[scheduler_pb2_grpc.SchedulerStub]:
    servicer = SchedulerServicer(service)
    server = grpc.aio.server(interceptors=[ExceptionToStatusInterceptor()])
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield scheduler_pb2_grpc.SchedulerStub(channel)
    finally:
        await server.stop(None)
        await servicer.close()


def report(limit: int) -> pb.PodReport:
    return pb.PodReport(
        pod_id="pod-0", runtime="rt", labels=["mt:sklearn"], management_address="127.0.0.1:1",
        grpc_address="10.0.0.1:8001", rest_address="http://10.0.0.1:8002", capacity_bytes=1_000_000,
        max_loading_concurrency=1, max_concurrency_per_model=limit,
    )


async def test_a_pods_limit_reaches_its_routes_and_a_change_is_streamed(
    service: SchedulerService, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    live = service.live
    await live.sync_registry(model_ids=["m"], vmodels={})
    await stub.ReportPod(report(3))
    assert (await live.reserve(model_id="m", pod_id="pod-0", size=10, exclusive=False))[0]
    assert await live.settle(model_id="m", pod_id="pod-0", size=10)
    call = stub.WatchRoutes(pb.WatchRoutesRequest())
    first = await asyncio.wait_for(call.read(), 30)
    [route] = first.routes
    assert [(e.pod_id, e.max_concurrency) for e in route.endpoints] == [("pod-0", 3)]
    # EnsureLoaded's endpoints say it too
    ensured = await stub.EnsureLoaded(pb.EnsureLoadedRequest(model_id="m"))
    assert [(e.pod_id, e.max_concurrency) for e in ensured.endpoints] == [("pod-0", 3)]
    # the same heartbeat again logs nothing; a new limit is one change
    position = await live.routes.position()
    await stub.ReportPod(report(3))
    assert await live.routes.position() == position
    await stub.ReportPod(report(1))
    change = await asyncio.wait_for(call.read(), 30)
    assert not change.snapshot
    assert [(e.pod_id, e.max_concurrency) for r in change.routes for e in r.endpoints] == [("pod-0", 1)]
    await stub.ReportPod(report(0))  # no limit any more: the field is left out (unlimited)
    change = await asyncio.wait_for(call.read(), 30)
    assert [(e.pod_id, e.max_concurrency) for r in change.routes for e in r.endpoints] == [("pod-0", 0)]
    call.cancel()
    # a table loaded from Redis reads the limit too
    await stub.ReportPod(report(2))
    table, _ = await load_table(live.routes)
    assert table.route("m") == [("pod-0", "10.0.0.1:8001", "http://10.0.0.1:8002", 2)]


async def test_unregistering_a_model_a_vmodel_refers_to_is_failed_precondition(
    service: SchedulerService, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    info = pb.ModelInfo(model_type="sklearn", storage_uri="s3://bucket/model")
    await stub.RegisterModel(pb.RegisterModelRequest(model_id="m1", model_info=info))
    await service.registry.upsert_vmodel(vmodel_id="v", owner="ksp", active="m1", target="m1", auto_delete=False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UnregisterModel(pb.UnregisterModelRequest(model_id="m1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (err.value.details() or "").startswith("Model m1 has referents: vmodel(s) v refer to it")
    status = await stub.GetModelStatus(pb.GetModelStatusRequest(model_id="m1"))
    assert status.status != pb.NOT_FOUND  # still registered
    await service.registry.delete_vmodel("v")
    await stub.UnregisterModel(pb.UnregisterModelRequest(model_id="m1"))
    status = await stub.GetModelStatus(pb.GetModelStatusRequest(model_id="m1"))
    assert status.status == pb.NOT_FOUND
