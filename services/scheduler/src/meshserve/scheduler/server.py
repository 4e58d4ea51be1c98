"""gRPC surface of the scheduler (:8034): protobuf <-> service values, nothing else."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence

import grpc
from redis.asyncio.client import PubSub

from meshserve.common.grpcutil import rpc_errors, rpc_stream_errors
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc
from meshserve.scheduler.routes import build_route_update
from meshserve.scheduler.service import Endpoint, ModelSpec, ModelState, SchedulerService

log = logging.getLogger(__name__)

_STATUS = {
    "NOT_FOUND": pb.NOT_FOUND,
    "NOT_LOADED": pb.NOT_LOADED,
    "LOADING": pb.LOADING,
    "LOADED": pb.LOADED,
    "LOADING_FAILED": pb.LOADING_FAILED,
}
_COPY = {"loading": pb.LOADING, "loaded": pb.LOADED}
_VMODEL_STATUS = {
    "NOT_FOUND": pb.VMODEL_NOT_FOUND,
    "DEFINED": pb.DEFINED,
    "TRANSITIONING": pb.TRANSITIONING,
    "TRANSITION_FAILED": pb.TRANSITION_FAILED,
}


def status_pb(state: ModelState) -> pb.ModelStatusInfo:
    return pb.ModelStatusInfo(
        status=_STATUS.get(state.status, pb.UNKNOWN),
        errors=list(state.errors),
        copies=[
            pb.CopyInfo(location=c.pod_id, copy_status=_COPY.get(c.state, pb.UNKNOWN), time_ms=c.since_ms)
            for c in sorted(state.copies, key=lambda c: -c.since_ms)
        ],
    )


def endpoints_pb(endpoints: Sequence[Endpoint]) -> list[pb.Endpoint]:
    return [pb.Endpoint(pod_id=e.pod_id, grpc_address=e.grpc_address, rest_address=e.rest_address) for e in endpoints]


def spec_from_pb(model_id: str, info: pb.ModelInfo, *, min_copies: int = 0, max_copies: int = 0) -> ModelSpec:
    return ModelSpec(
        model_id=model_id,
        model_type=info.model_type,
        model_type_version=info.model_type_version,
        runtime=info.runtime,
        protocol_version=info.protocol_version,
        storage_uri=info.storage_uri,
        storage_key=info.storage_key,
        storage_path=info.storage_path,
        storage_params=dict(info.storage_params),
        declared_size=info.declared_size_bytes,
        min_copies=min_copies,
        max_copies=max_copies,
    )


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, service: SchedulerService) -> None:
        self.service = service

    @rpc_errors
    async def RegisterModel(self, request: pb.RegisterModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatusInfo:
        spec = spec_from_pb(
            request.model_id, request.model_info, min_copies=request.min_copies, max_copies=request.max_copies
        )
        state = await self.service.register_model(spec, load_now=request.load_now)
        if request.sync and request.load_now:
            await self.service.ensure_loaded(request.model_id)
            state = await self.service.model_state(request.model_id)
        return status_pb(state)

    @rpc_errors
    async def UnregisterModel(self, request: pb.UnregisterModelRequest, context: grpc.aio.ServicerContext) -> pb.UnregisterModelResponse:
        await self.service.unregister_model(request.model_id)
        return pb.UnregisterModelResponse()

    @rpc_errors
    async def GetModelStatus(self, request: pb.GetModelStatusRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatusInfo:
        return status_pb(await self.service.model_state(request.model_id))

    @rpc_errors
    async def EnsureLoaded(self, request: pb.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> pb.EnsureLoadedResponse:
        state, endpoints = await self.service.ensure_loaded(request.model_id, suspect_pods=list(request.suspect_pods))
        return pb.EnsureLoadedResponse(status=status_pb(state), endpoints=endpoints_pb(endpoints))

    @rpc_errors
    async def SetVModel(self, request: pb.SetVModelRequest, context: grpc.aio.ServicerContext) -> pb.VModelStatusInfo:
        if request.HasField("model_info") and request.model_info.model_type:
            existing = await self.service.registry.find_model(request.target_model_id)
            if existing is None:
                await self.service.register_model(
                    spec_from_pb(request.target_model_id, request.model_info), load_now=request.load_now
                )
        if request.update_only and await self.service.registry.get_vmodel(request.vmodel_id) is None:
            from meshserve.common.errors import NotFound

            raise NotFound(f"vmodel {request.vmodel_id!r} not found (update_only)")
        await self.service.set_vmodel(
            vmodel_id=request.vmodel_id,
            target_model_id=request.target_model_id,
            owner=request.owner,
            auto_delete=request.auto_delete_target_model,
            force=request.force,
            load_now=request.load_now,
        )
        if request.sync:
            await self.service.ensure_loaded(request.target_model_id)
        return await self._vmodel_status(request.vmodel_id)

    async def _vmodel_status(self, vmodel_id: str) -> pb.VModelStatusInfo:
        status, record, active, target = await self.service.vmodel_state(vmodel_id)
        if record is None:
            return pb.VModelStatusInfo(status=pb.VMODEL_NOT_FOUND)
        info = pb.VModelStatusInfo(
            status=_VMODEL_STATUS[status],
            active_model_id=record.active_model_id,
            target_model_id=record.target_model_id or record.active_model_id,
            owner=record.owner,
        )
        if active is not None:
            info.active_model_status.CopyFrom(status_pb(active))
        if target is not None:
            info.target_model_status.CopyFrom(status_pb(target))
        return info

    @rpc_errors
    async def DeleteVModel(self, request: pb.DeleteVModelRequest, context: grpc.aio.ServicerContext) -> pb.DeleteVModelResponse:
        await self.service.delete_vmodel(request.vmodel_id, owner=request.owner)
        return pb.DeleteVModelResponse()

    @rpc_errors
    async def GetVModelStatus(self, request: pb.GetVModelStatusRequest, context: grpc.aio.ServicerContext) -> pb.VModelStatusInfo:
        return await self._vmodel_status(request.vmodel_id)

    @rpc_errors
    async def ReportUsage(self, request: pb.ReportUsageRequest, context: grpc.aio.ServicerContext) -> pb.ReportUsageResponse:
        usage: dict[str, int] = {}
        for u in request.usage:
            usage[u.model_id] = usage.get(u.model_id, 0) + int(u.requests)
        await self.service.report_usage(usage)
        return pb.ReportUsageResponse()

    @rpc_errors
    async def ReportPod(self, request: pb.PodReport, context: grpc.aio.ServicerContext) -> pb.ReportPodResponse:
        if not request.pod_id or not request.management_address:
            from meshserve.common.errors import InvalidArgument

            raise InvalidArgument("pod_id and management_address are required")
        if request.leaving:
            await self.service.pod_leaving(request.pod_id)
            return pb.ReportPodResponse()
        await self.service.report_pod(
            {
                "pod_id": request.pod_id,
                "runtime": request.runtime,
                "labels": list(request.labels),
                "management_address": request.management_address,
                "grpc_address": request.grpc_address,
                "rest_address": request.rest_address,
                "capacity": request.capacity_bytes,
                "used": request.used_bytes,
                "max_loading": max(1, request.max_loading_concurrency),
                "default_size": request.default_model_size_bytes or 1_000_000,
                "started_ms": request.started_at_ms,
            },
            list(request.loaded_model_ids),
        )
        return pb.ReportPodResponse(
            heartbeat_interval_ms=int(self.service.settings.heartbeat_interval_seconds * 1000)
        )

    @rpc_stream_errors
    async def WatchRoutes(self, request: pb.WatchRoutesRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.RouteUpdate]:
        live = self.service.live
        pubsub = live.redis.pubsub()
        await pubsub.subscribe(live.channel)
        try:
            # subscribe first, then snapshot: nothing published in between is lost
            yield await self._snapshot()
            async for update in self.relay(pubsub):
                yield update
        finally:
            await pubsub.aclose()

    async def relay(self, pubsub: PubSub) -> AsyncIterator[pb.RouteUpdate]:
        """The changes after the snapshot: for each batch of queued notifications on the
        routes channel (`pubsub` is subscribed to it), one `RouteUpdate` read from Redis.
        (Also driven directly by bench/placement's end-to-end route publishing figure.)"""
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            if message is None:
                continue
            models: set[str] = set()
            vmodels: set[str] = set()
            version = 0
            while message is not None:  # coalesce whatever is queued
                body = json.loads(message["data"])
                models.update(body.get("models", []))
                vmodels.update(body.get("vmodels", []))
                version = max(version, int(body.get("version", 0)))
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            yield await self._changes(models, vmodels, version)

    # Route updates are built as wire bytes by routes.build_route_update (protobuf's own
    # bytes, several times cheaper than pb.Route / pb.Endpoint per route) and parsed once:
    # the generated handler serialises a message, so the stream cannot carry raw bytes.
    async def _snapshot(self) -> pb.RouteUpdate:
        live = self.service.live
        models = sorted(await live.model_ids())
        routes = await live.routes_many(models)
        vmodels = await live.vmodels()
        return build_route_update(
            [(m, routes[m]) for m in models],
            vmodels=sorted(vmodels.items()),
            snapshot=True,
        )

    async def _changes(self, models: set[str], vmodels: set[str], version: int) -> pb.RouteUpdate:
        live = self.service.live
        # only the changed models: which are still registered (SMISMEMBER, not every id),
        # then their routes with the addresses of their pods in one script per 5,000 models
        known = await live.registered(models)
        present = sorted(m for m in models if m in known)
        routes = await live.routes_many(present)
        current_vmodels = await live.vmodels() if vmodels else {}
        return build_route_update(
            [(m, routes.get(m, [])) for m in present],
            removed_models=sorted(m for m in models if m not in known),
            vmodels=[(v, current_vmodels[v]) for v in sorted(vmodels) if v in current_vmodels],
            removed_vmodels=sorted(v for v in vmodels if v not in current_vmodels),
            version=version,
        )
