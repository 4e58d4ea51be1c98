"""gRPC surface of the scheduler (:8034): protobuf <-> service values, nothing else.

Each RPC converts its request and calls the object that owns the use case
(`SchedulerService` for registration, status and SetVModel; `service.copies` for
EnsureLoaded; `service.vmodels`, `service.pods`; the route hub for WatchRoutes).
What a method raises becomes a status in one place: the server's
`grpcutil.ExceptionToStatusInterceptor` (`app.py`; Redis outages via the translator
`store.live.redis_unavailable`), so the methods here carry no error handling.

May import: the use cases (`service` and what it exposes), `status`, `routing.hub`,
`meshserve.common` (protos, gRPC helpers). Nothing below imports this module.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence

import grpc

from meshserve.common.errors import FailedPrecondition
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc
from meshserve.scheduler.routing.hub import RouteHub
from meshserve.scheduler.service import Endpoint, ModelSpec, SchedulerService
from meshserve.scheduler.status import ModelState

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


def endpoints_pb(endpoints: Sequence[Endpoint], limits: Mapping[str, int] | None = None) -> list[pb.Endpoint]:
    """Endpoints as the wire has them; `limits`: pod -> per-copy concurrency limit (absent: none)."""
    limits = limits or {}
    return [
        pb.Endpoint(
            pod_id=e.pod_id, grpc_address=e.grpc_address, rest_address=e.rest_address,
            max_concurrency=limits.get(e.pod_id, 0),
        )
        for e in endpoints
    ]


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
    def __init__(self, service: SchedulerService, *, hub: RouteHub | None = None) -> None:
        self.service = service
        self.hub = hub or RouteHub(service.live.routes)

    async def close(self) -> None:
        await self.hub.close()

    async def RegisterModel(self, request: pb.RegisterModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatusInfo:
        spec = spec_from_pb(
            request.model_id, request.model_info, min_copies=request.min_copies, max_copies=request.max_copies
        )
        return status_pb(await self.service.register_model(spec, load_now=request.load_now, wait=request.sync))

    async def UnregisterModel(self, request: pb.UnregisterModelRequest, context: grpc.aio.ServicerContext) -> pb.UnregisterModelResponse:
        # upstream ModelMesh (deleteModel): a model a vmodel refers to (as its active or its
        # target model) is not unregistered; the vmodel goes first
        vmodels, _ = await self.service.registry.list_vmodels(limit=1_000_000)
        referents = sorted(v.id for v in vmodels if request.model_id in (v.active_model_id, v.target_model_id))
        if referents:
            raise FailedPrecondition(
                f"Model {request.model_id} has referents: vmodel(s) {', '.join(referents[:5])}"
                f"{' and more' if len(referents) > 5 else ''} refer to it; delete or retarget them first"
            )
        await self.service.unregister_model(request.model_id)
        return pb.UnregisterModelResponse()

    async def GetModelStatus(self, request: pb.GetModelStatusRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatusInfo:
        return status_pb(await self.service.model_state(request.model_id))

    async def EnsureLoaded(self, request: pb.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> pb.EnsureLoadedResponse:
        state, endpoints = await self.service.copies.ensure_loaded(
            request.model_id, suspect_pods=list(request.suspect_pods), miss=True
        )
        limits = await self.service.live.pod_limits(e.pod_id for e in endpoints)
        return pb.EnsureLoadedResponse(status=status_pb(state), endpoints=endpoints_pb(endpoints, limits))

    async def SetVModel(self, request: pb.SetVModelRequest, context: grpc.aio.ServicerContext) -> pb.VModelStatusInfo:
        has_target = request.HasField("model_info") and request.model_info.model_type
        await self.service.set_vmodel(
            vmodel_id=request.vmodel_id,
            target_model_id=request.target_model_id,
            target=spec_from_pb(request.target_model_id, request.model_info) if has_target else None,
            owner=request.owner,
            auto_delete=request.auto_delete_target_model,
            force=request.force,
            load_now=request.load_now,
            update_only=request.update_only,
            expected_target_model_id=request.expected_target_model_id,
            wait=request.sync,
        )
        return await self._vmodel_status(request.vmodel_id)

    async def _vmodel_status(self, vmodel_id: str) -> pb.VModelStatusInfo:
        status, record, active, target = await self.service.vmodels.vmodel_state(vmodel_id)
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

    async def DeleteVModel(self, request: pb.DeleteVModelRequest, context: grpc.aio.ServicerContext) -> pb.DeleteVModelResponse:
        await self.service.vmodels.delete_vmodel(request.vmodel_id, owner=request.owner)
        return pb.DeleteVModelResponse()

    async def GetVModelStatus(self, request: pb.GetVModelStatusRequest, context: grpc.aio.ServicerContext) -> pb.VModelStatusInfo:
        return await self._vmodel_status(request.vmodel_id)

    async def ReportUsage(self, request: pb.ReportUsageRequest, context: grpc.aio.ServicerContext) -> pb.ReportUsageResponse:
        usage: dict[str, int] = {}
        for u in request.usage:
            usage[u.model_id] = usage.get(u.model_id, 0) + int(u.requests)
        await self.service.report_usage(usage)
        return pb.ReportUsageResponse()

    async def ReportPod(self, request: pb.PodReport, context: grpc.aio.ServicerContext) -> pb.ReportPodResponse:
        if not request.pod_id or not request.management_address:
            from meshserve.common.errors import InvalidArgument

            raise InvalidArgument("pod_id and management_address are required")
        if request.leaving:
            await self.service.pods.pod_leaving(request.pod_id)
            return pb.ReportPodResponse()
        await self.service.pods.report_pod(
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
                "max_concurrency": request.max_concurrency_per_model,
            },
            list(request.loaded_model_ids),
        )
        return pb.ReportPodResponse(
            heartbeat_interval_ms=int(self.service.settings.heartbeat_interval_seconds * 1000)
        )

    async def WatchRoutes(self, request: pb.WatchRoutesRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        # serialised RouteUpdates from this process's route hub: registered with a
        # pass-through serializer (add_to_server)
        async for update in self.hub.subscribe():
            yield update


def _serialised(update: bytes | pb.RouteUpdate) -> bytes:
    return update if isinstance(update, bytes) else update.SerializeToString()


def add_to_server(servicer: SchedulerServicer, server: grpc.aio.Server) -> None:
    """The generated `add_SchedulerServicer_to_server`, except that WatchRoutes sends the
    bytes the route hub built as they are (the generated handler would want a message, and
    parsing the bytes into one only to serialise it again costs more than building them)."""
    captured: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    class _Capture:
        def add_generic_rpc_handlers(self, handlers: object) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
            captured[service] = handlers

    scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, _Capture())  # type: ignore[arg-type]
    (service, handlers), = captured.items()
    handlers = dict(handlers)
    handlers["WatchRoutes"] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchRoutes,
        request_deserializer=pb.WatchRoutesRequest.FromString,
        response_serializer=_serialised,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
