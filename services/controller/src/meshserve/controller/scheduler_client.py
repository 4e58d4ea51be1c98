"""The controller's side of the scheduler gRPC API (meshserve.v1.Scheduler).

The only module of the controller that touches `_pb2` types: it converts ModelSpec -> ModelInfo
on the way out and VModelStatusInfo -> `status.VModelView` on the way in, so status and reconcile
logic stay protobuf-free. Every call carries a deadline. Errors are mapped to MeshError subclasses
(`meshserve.common.errors.from_grpc`); the caller turns `Unavailable` into upstream's
"Waiting for runtime Pod to become available" and `AlreadyExists` into the other-owner failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from meshserve.common.backoff import backoff_delay
from meshserve.common.errors import from_grpc
from meshserve.common.proto.meshserve.v1 import scheduler_pb2, scheduler_pb2_grpc
from meshserve.controller.specs import ModelSpec
from meshserve.controller.status import (
    CopyInfo,
    ModelStatusCode,
    ModelStatusView,
    VModelStatusCode,
    VModelView,
)

log = logging.getLogger(__name__)


class SchedulerPort(Protocol):
    async def set_vmodel(
        self, *, vmodel_id: str, owner: str, model_id: str, spec: ModelSpec, load_now: bool
    ) -> VModelView: ...

    async def get_vmodel_status(self, *, vmodel_id: str, owner: str) -> VModelView | None: ...

    async def delete_vmodel(self, *, vmodel_id: str, owner: str) -> None: ...


def model_info(spec: ModelSpec) -> scheduler_pb2.ModelInfo:
    return scheduler_pb2.ModelInfo(
        model_type=spec.model_type,
        model_type_version=spec.model_type_version,
        runtime=spec.runtime,
        storage_key=spec.storage_key,
        storage_params=dict(spec.storage_params),
        storage_path=spec.storage_path,
        protocol_version=spec.protocol_version,
    )


def _model_view(msg: scheduler_pb2.ModelStatusInfo) -> ModelStatusView:
    return ModelStatusView(
        status=ModelStatusCode(msg.status),
        errors=tuple(msg.errors),
        copies=tuple(CopyInfo(location=c.location, status=ModelStatusCode(c.copy_status), time_ms=c.time_ms) for c in msg.copies),
    )


def vmodel_view(msg: scheduler_pb2.VModelStatusInfo) -> VModelView | None:
    """None when the scheduler does not know the vmodel (status NOT_FOUND)."""
    if msg.status == scheduler_pb2.VMODEL_NOT_FOUND:
        return None
    return VModelView(
        status=VModelStatusCode(msg.status),
        active_model_id=msg.active_model_id,
        target_model_id=msg.target_model_id,
        active=_model_view(msg.active_model_status) if msg.HasField("active_model_status") else None,
        target=_model_view(msg.target_model_status) if msg.HasField("target_model_status") else None,
    )


class GrpcScheduler:
    """SchedulerPort over a grpc.aio channel (the channel is owned by the caller)."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 10.0) -> None:
        self._stub = scheduler_pb2_grpc.SchedulerStub(channel)
        self._timeout = timeout

    async def set_vmodel(
        self, *, vmodel_id: str, owner: str, model_id: str, spec: ModelSpec, load_now: bool
    ) -> VModelView:
        request = scheduler_pb2.SetVModelRequest(
            vmodel_id=vmodel_id, owner=owner, target_model_id=model_id, model_info=model_info(spec),
            auto_delete_target_model=True, load_now=load_now,
        )
        try:
            reply = await self._stub.SetVModel(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err.code(), err.details() or "") from None
        view = vmodel_view(reply)
        if view is None:
            return VModelView(status=VModelStatusCode.UNKNOWN, active_model_id=model_id, target_model_id=model_id)
        return view

    async def get_vmodel_status(self, *, vmodel_id: str, owner: str) -> VModelView | None:
        try:
            reply = await self._stub.GetVModelStatus(
                scheduler_pb2.GetVModelStatusRequest(vmodel_id=vmodel_id, owner=owner), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err.code(), err.details() or "") from None
        return vmodel_view(reply)

    async def delete_vmodel(self, *, vmodel_id: str, owner: str) -> None:
        try:
            await self._stub.DeleteVModel(
                scheduler_pb2.DeleteVModelRequest(vmodel_id=vmodel_id, owner=owner), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:   # already gone: deleting is idempotent
                raise from_grpc(err.code(), err.details() or "") from None

    async def watch_changes(self) -> AsyncIterator[set[str]]:
        """Forever: the model ids and vmodel ids of every route change the scheduler publishes
        (a copy loaded or gone, a vmodel flipped), over `WatchRoutes`; reconnects with back-off."""
        attempt = 0
        while True:
            try:
                stream = self._stub.WatchRoutes(scheduler_pb2.WatchRoutesRequest(router_id=f"controller-{os.getpid()}"))
                async for update in stream:
                    attempt = 0
                    ids = {r.model_id for r in update.routes} | set(update.removed_models)
                    ids |= {v.vmodel_id for v in update.vmodels} | set(update.removed_vmodels)
                    if ids:
                        yield ids
            except grpc.aio.AioRpcError as err:
                log.debug("scheduler route watch ended (%s); reconnecting", err.code())
            await asyncio.sleep(backoff_delay(attempt=attempt, rand=random.random(), base=0.5, cap=10.0))
            attempt += 1
