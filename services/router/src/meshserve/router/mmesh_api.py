"""ModelMesh's management gRPC API (`mmesh.ModelMesh`, proto/mmesh/model-mesh.proto) on the
router's gRPC port, for tools written against upstream ModelMesh.

Each call is translated to the scheduler's own API (meshserve.v1.Scheduler), which holds
the registry and does the loading; this module keeps no state of its own apart from the
background loads it starts for `ensureLoaded` without `sync`. It never places, loads or
unloads anything itself.

Requests. Upstream's `ModelInfo {type, path, key}` is what ModelMesh Serving's controller
writes, and is read the same way:
* `type` is a type label: `|`-separated parts `rt:<runtime>`, `mt:<format>[:<version>]`,
  `pv:<protocol>`; a part without one of these prefixes is a format (`sklearn`, `onnx:1`);
* `key` is the controller's JSON object (`storage_key`, `storage_params`,
  `model_type: {name, version}`; `schema_path` is not carried, as our controller does not
  carry it either); any other non-empty key is taken as the storage key (the name of an
  entry of the storage-config secret);
* `path` is the storage path, or a storage URI when it has a scheme (`s3://b/p`).
`lastUsedTime` has no meshserve counterpart and is ignored.

Upstream's behaviour kept here (ModelMeshApi / ModelMesh / VModelManager, where the
scheduler's API differs):
* an empty modelId is INVALID_ARGUMENT `must provide non-empty modelId` (vmodel calls:
  `Must provide vModelId` / `Must provide target modelId for vmodel <id>`); an empty
  `modelInfo.type` is `Must provide non-empty model type string (modelInfo.type)`;
* `getModelStatus` of an unknown model answers status NOT_FOUND; `ensureLoaded` of one
  fails NOT_FOUND `model not found`; `unregisterModel` and `deleteVModel` of an unknown id
  succeed; `getVModelStatus` of an unknown vmodel (or of another `owner`) answers the empty
  message;
* re-registering an id with other attributes is ALREADY_EXISTS `Model already exists with
  different attribute values`; `setVModel` checks `owner` (ALREADY_EXISTS), `updateOnly`
  (NOT_FOUND `vmodel <id> not found`), `expectedTargetModelId` (FAILED_PRECONDITION) and the
  target (NOT_FOUND `Target model <id> not found` without modelInfo, ALREADY_EXISTS when
  modelInfo differs from the registered one) before anything changes;
* a load that fails is not an error of `registerModel` / `ensureLoaded` with `sync`: the
  answer is the model's status, LOADING_FAILED with the error; so is a model no running
  pod can serve (`There are no running instances that meet the label requirements of
  type <type>: [<labels>]`, which ModelMesh Serving's controller decodes);
* with `loadNow` (or `ensureLoaded` without `sync`) a model with no copy yet reads LOADING;
* `setVModel` with `sync` waits for the transition to end (at most `transition_wait_seconds`).
Other statuses from the scheduler (UNAVAILABLE, RESOURCE_EXHAUSTED, INVALID_ARGUMENT on a
bad storage URI, ...) come back with their code and message.

Each outgoing call has a deadline: what is left of the caller's, capped by
`call_timeout_seconds` (`load_timeout_seconds` for calls that wait for a load).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from meshserve.common.backoff import backoff_delay
from meshserve.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    NotFound,
    Unavailable,
    from_grpc,
)
from meshserve.common.grpcutil import add_guarded
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc
from meshserve.common.proto.mmesh import model_mesh_pb2 as mm
from meshserve.common.proto.mmesh import model_mesh_pb2_grpc

log = logging.getLogger(__name__)

_Status = mm.ModelStatusInfo.ModelStatus
_VStatus = mm.VModelStatusInfo.VModelStatus
_MODEL_STATUS = {  # the scheduler's enum reuses upstream's names and numbers; mapped by name all the same
    pb.NOT_FOUND: _Status.NOT_FOUND,
    pb.NOT_LOADED: _Status.NOT_LOADED,
    pb.LOADING: _Status.LOADING,
    pb.LOADED: _Status.LOADED,
    pb.LOADING_FAILED: _Status.LOADING_FAILED,
    pb.UNKNOWN: _Status.UNKNOWN,
}
_VMODEL_STATUS = {
    pb.VMODEL_NOT_FOUND: _VStatus.NOT_FOUND,
    pb.DEFINED: _VStatus.DEFINED,
    pb.TRANSITIONING: _VStatus.TRANSITIONING,
    pb.TRANSITION_FAILED: _VStatus.TRANSITION_FAILED,
    pb.VMODEL_UNKNOWN: _VStatus.UNKNOWN,
}
MODEL_NOT_FOUND = "model not found"
MODEL_EXISTS = "Model already exists with different attribute values"
NO_HOME_PREFIX = "There are no running instances that meet the label requirements of type "
_EMPTY_INFO = mm.ModelInfo()

Resp = TypeVar("Resp")


# -- requests: upstream -> scheduler ----------------------------------------------------------
def require_model_id(model_id: str) -> str:
    if not model_id:
        raise InvalidArgument("must provide non-empty modelId")
    return model_id


def model_info(info: mm.ModelInfo) -> pb.ModelInfo:
    """Upstream's ModelInfo as the scheduler's (see the module docstring); InvalidArgument
    naming the field when it cannot be read."""
    if not info.type:
        raise InvalidArgument("Must provide non-empty model type string (modelInfo.type)")
    fmt = version = runtime = protocol = ""
    for part in info.type.split("|"):
        kind, sep, rest = part.partition(":")
        if not part or (sep and kind in ("rt", "mt", "pv") and not rest):
            raise InvalidArgument(f"modelInfo.type {info.type!r} has an empty part; expected e.g. mt:sklearn|pv:grpc-v2")
        if sep and kind == "rt":
            runtime = rest
        elif sep and kind == "pv":
            protocol = rest
        else:
            fmt, _, version = (rest if sep and kind == "mt" else part).partition(":")
    out = pb.ModelInfo(runtime=runtime, protocol_version=protocol)
    key = info.key.strip()
    if key.startswith("{"):
        _read_key(key, out)
    elif key:
        out.storage_key = key
    if fmt:  # the label wins over the key's model_type
        out.model_type, out.model_type_version = fmt, version
    if not out.model_type:
        raise InvalidArgument(
            f"modelInfo.type {info.type!r} names no model format: give mt:<format> there "
            'or "model_type": {"name": <format>} in modelInfo.key'
        )
    if not info.path:
        raise InvalidArgument("must provide non-empty modelInfo.path (the model's storage path or URI)")
    if "://" in info.path:
        out.storage_uri = info.path
    else:
        out.storage_path = info.path
    return out


def _read_key(key: str, out: pb.ModelInfo) -> None:
    """ModelMesh Serving's key JSON into `out`."""
    try:
        doc = json.loads(key)
    except ValueError as err:
        raise InvalidArgument(f"modelInfo.key is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("modelInfo.key must be a JSON object")
    storage_key = doc.get("storage_key") or ""
    params = doc.get("storage_params") or {}
    model_type = doc.get("model_type") or {}
    if not isinstance(storage_key, str):
        raise InvalidArgument("modelInfo.key: storage_key must be a string")
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise InvalidArgument("modelInfo.key: storage_params must be an object of strings")
    if not isinstance(model_type, dict) or not all(isinstance(model_type.get(f, ""), str) for f in ("name", "version")):
        raise InvalidArgument('modelInfo.key: model_type must be {"name": <format>, "version": <version>}')
    out.storage_key = storage_key
    out.storage_params.update(params)
    out.model_type = model_type.get("name", "")
    out.model_type_version = model_type.get("version", "")


# -- answers: scheduler -> upstream -----------------------------------------------------------
def status_info(msg: pb.ModelStatusInfo) -> mm.ModelStatusInfo:
    status = _MODEL_STATUS.get(msg.status, _Status.UNKNOWN)
    return mm.ModelStatusInfo(
        status=status,
        errors=[] if status == _Status.NOT_FOUND else list(msg.errors),  # upstream's NOT_FOUND has none
        modelCopyInfos=[
            mm.ModelStatusInfo.ModelCopyInfo(
                location=c.location, copyStatus=_MODEL_STATUS.get(c.copy_status, _Status.UNKNOWN), time=max(0, c.time_ms)
            )
            for c in msg.copies
        ],
    )


def vmodel_status_info(msg: pb.VModelStatusInfo) -> mm.VModelStatusInfo:
    if msg.status == pb.VMODEL_NOT_FOUND:
        return mm.VModelStatusInfo()
    out = mm.VModelStatusInfo(
        status=_VMODEL_STATUS.get(msg.status, _VStatus.UNKNOWN),
        activeModelId=msg.active_model_id,
        targetModelId=msg.target_model_id or msg.active_model_id,
        activeModelStatus=status_info(msg.active_model_status),
        owner=msg.owner,
    )
    if out.targetModelId != out.activeModelId and msg.HasField("target_model_status"):
        out.targetModelStatus.CopyFrom(status_info(msg.target_model_status))
    return out


def _started(status: mm.ModelStatusInfo) -> mm.ModelStatusInfo:
    """A load was just started: a model with no copy yet reads LOADING, as upstream's does."""
    if status.status == _Status.NOT_LOADED:
        status.status = _Status.LOADING
    return status


class ModelMeshApi(model_mesh_pb2_grpc.ModelMeshServicer):
    """`mmesh.ModelMesh` over the scheduler's stub. Method names are upstream's (the generated
    base class requires them)."""

    def __init__(
        self,
        scheduler: scheduler_pb2_grpc.SchedulerStub,
        *,
        call_timeout_seconds: float = 30.0,
        load_timeout_seconds: float = 120.0,
        transition_wait_seconds: float = 240.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scheduler = scheduler
        self.call_timeout = call_timeout_seconds
        self.load_timeout = load_timeout_seconds
        self.transition_wait = transition_wait_seconds   # upstream waits 4 minutes
        self.clock = clock
        self._loads: dict[str, asyncio.Task[None]] = {}   # model id -> background EnsureLoaded

    async def close(self) -> None:
        """Cancel the background loads' calls (the scheduler finishes the loads themselves)."""
        tasks = list(self._loads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- calls to the scheduler ------------------------------------------------------------
    async def _call(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: Any,
        context: grpc.aio.ServicerContext | None,
        *,
        cap: float,
    ) -> Resp:
        """One scheduler call with the caller's remaining budget (capped); its failure as a MeshError."""
        remaining = None if context is None else context.time_remaining()
        timeout = cap if remaining is None else max(0.0, min(remaining, cap))
        try:
            return await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err.code(), err.details() or err.code().name) from None

    async def _model_status(self, model_id: str, context: grpc.aio.ServicerContext | None) -> mm.ModelStatusInfo:
        reply = await self._call(
            self.scheduler.GetModelStatus, pb.GetModelStatusRequest(model_id=model_id), context, cap=self.call_timeout
        )
        return status_info(reply)

    async def _vmodel_status(self, vmodel_id: str, context: grpc.aio.ServicerContext | None) -> mm.VModelStatusInfo:
        reply = await self._call(
            self.scheduler.GetVModelStatus, pb.GetVModelStatusRequest(vmodel_id=vmodel_id), context, cap=self.call_timeout
        )
        return vmodel_status_info(reply)

    async def _ensure_loaded(self, model_id: str, context: grpc.aio.ServicerContext | None) -> mm.ModelStatusInfo:
        """Wait for a loaded copy; a failed load answers the model's status (LOADING_FAILED)."""
        try:
            reply = await self._call(
                self.scheduler.EnsureLoaded, pb.EnsureLoadedRequest(model_id=model_id, sync=True), context,
                cap=self.load_timeout,
            )
        except FailedPrecondition:   # the scheduler's "failed to load"
            return await self._model_status(model_id, context)
        except Unavailable as err:
            return await self._no_home(model_id, err, context)
        except NotFound:
            raise NotFound(MODEL_NOT_FOUND) from None
        return status_info(reply.status)

    async def _no_home(self, model_id: str, err: Unavailable, context: grpc.aio.ServicerContext | None) -> mm.ModelStatusInfo:
        """No running pod has the model's labels: upstream answers this as a failed load whose
        error is `There are no running instances that meet the label requirements of type
        <type>: [<labels>]` (ModelMesh Serving's controller reads it from there), not as an
        RPC error. Other UNAVAILABLEs are raised again."""
        if not err.message.startswith(NO_HOME_PREFIX):
            raise err
        status = await self._model_status(model_id, context)
        if status.status == _Status.LOADED:
            return status
        end = err.message.find("]", len(NO_HOME_PREFIX))
        status.status = _Status.LOADING_FAILED
        status.errors[:] = [err.message if end < 0 else err.message[: end + 1]]  # without our hint after it
        return status

    def _load_in_background(self, model_id: str) -> None:
        """One background EnsureLoaded per model (the scheduler shares the load anyway)."""
        running = self._loads.get(model_id)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(self._load_quietly(model_id), name=f"mmesh ensureLoaded {model_id}")
        self._loads[model_id] = task
        task.add_done_callback(lambda t: self._loads.pop(model_id, None) if self._loads.get(model_id) is t else None)

    async def _load_quietly(self, model_id: str) -> None:
        try:
            await self._ensure_loaded(model_id, None)
        except MeshError as err:
            log.info("background load of %s (mmesh ensureLoaded): %s %s", model_id, err.status, err.message)

    # -- models ----------------------------------------------------------------------------
    async def registerModel(self, request: mm.RegisterModelRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:
        model_id = require_model_id(request.modelId)
        info = model_info(request.modelInfo)
        sync = request.loadNow and request.sync
        try:
            reply = await self._call(
                self.scheduler.RegisterModel,
                pb.RegisterModelRequest(model_id=model_id, model_info=info, load_now=request.loadNow, sync=sync),
                context,
                cap=self.load_timeout if sync else self.call_timeout,
            )
        except AlreadyExists:
            raise AlreadyExists(MODEL_EXISTS) from None
        except FailedPrecondition:  # registered; the load it waited for failed
            if not sync:
                raise
            return await self._model_status(model_id, context)
        except Unavailable as err:
            if not sync:
                raise
            return await self._no_home(model_id, err, context)
        status = status_info(reply)
        return _started(status) if request.loadNow else status

    async def unregisterModel(self, request: mm.UnregisterModelRequest, context: grpc.aio.ServicerContext) -> mm.UnregisterModelResponse:
        model_id = require_model_id(request.modelId)
        try:
            await self._call(
                self.scheduler.UnregisterModel, pb.UnregisterModelRequest(model_id=model_id), context, cap=self.call_timeout
            )
        except NotFound:
            pass  # upstream: no effect when the model is not found
        return mm.UnregisterModelResponse()

    async def getModelStatus(self, request: mm.GetStatusRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:
        return await self._model_status(require_model_id(request.modelId), context)

    async def ensureLoaded(self, request: mm.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:
        model_id = require_model_id(request.modelId)
        if request.sync:
            return await self._ensure_loaded(model_id, context)
        status = await self._model_status(model_id, context)
        if status.status == _Status.NOT_FOUND:
            raise NotFound(MODEL_NOT_FOUND)
        if status.status == _Status.LOADED:
            return status
        self._load_in_background(model_id)
        return _started(status)

    # -- vmodels ---------------------------------------------------------------------------
    async def setVModel(self, request: mm.SetVModelRequest, context: grpc.aio.ServicerContext) -> mm.VModelStatusInfo:
        vmodel_id, target = request.vModelId, request.targetModelId
        if not vmodel_id:
            raise InvalidArgument("Must provide vModelId")
        if not target:
            raise InvalidArgument(f"Must provide target modelId for vmodel {vmodel_id} (targetModelId)")
        given = request.modelInfo != _EMPTY_INFO
        info = model_info(request.modelInfo) if given else None
        current = await self._vmodel_status(vmodel_id, context)
        self._check_vmodel_preconditions(request, current)
        created = await self._ensure_target(target, info, context)
        try:
            reply = await self._call(
                self.scheduler.SetVModel,
                pb.SetVModelRequest(
                    vmodel_id=vmodel_id,
                    target_model_id=target,
                    owner=request.owner,
                    auto_delete_target_model=request.autoDeleteTargetModel,
                    load_now=request.loadNow,
                    force=request.force,
                    # checked again by the scheduler in the transaction that writes the vmodel
                    update_only=request.updateOnly,
                    expected_target_model_id=request.expectedTargetModelId,
                ),
                context,
                cap=self.call_timeout,
            )
        except MeshError:
            if created:  # leave nothing behind that this failed call registered
                await self._forget(target)
            raise
        status = vmodel_status_info(reply)
        if request.sync:
            status = await self._wait_for_transition(vmodel_id, status, load=request.loadNow or given, context=context)
        return status

    def _check_vmodel_preconditions(self, request: mm.SetVModelRequest, current: mm.VModelStatusInfo) -> None:
        """Upstream's owner / updateOnly / expectedTargetModelId checks, against the vmodel as it is."""
        vmodel_id, target, expected = request.vModelId, request.targetModelId, request.expectedTargetModelId
        exists = current.status != _VStatus.NOT_FOUND
        if not exists:
            if request.updateOnly:
                raise NotFound(f"vmodel {vmodel_id} not found")
            if expected and expected != target:
                raise FailedPrecondition(f"vmodel {vmodel_id} not found")
            return
        if request.owner and current.owner != request.owner:
            raise AlreadyExists(f'vmodel {vmodel_id} already exists with different owner "{current.owner}"')
        if expected and expected != current.targetModelId and target != current.targetModelId:
            raise FailedPrecondition(
                f"Existing target model {current.targetModelId} does not match expected {expected}"
            )

    async def _ensure_target(self, target: str, info: pb.ModelInfo | None, context: grpc.aio.ServicerContext) -> bool:
        """The target must exist (no modelInfo) or be registered with `info`; True when this
        call registered it."""
        existing = await self._model_status(target, context)
        if info is None:
            if existing.status == _Status.NOT_FOUND:
                raise NotFound(f"Target model {target} not found")
            return False
        try:
            await self._call(
                self.scheduler.RegisterModel, pb.RegisterModelRequest(model_id=target, model_info=info), context,
                cap=self.call_timeout,
            )
        except AlreadyExists:
            raise AlreadyExists(f"Target model {target} already exists with different attribute values") from None
        return existing.status == _Status.NOT_FOUND

    async def _forget(self, model_id: str) -> None:
        try:
            await self._call(self.scheduler.UnregisterModel, pb.UnregisterModelRequest(model_id=model_id), None, cap=self.call_timeout)
        except MeshError as err:
            log.warning("model %s registered by a failed setVModel stays registered: %s", model_id, err.message)

    async def _wait_for_transition(
        self, vmodel_id: str, status: mm.VModelStatusInfo, *, load: bool, context: grpc.aio.ServicerContext
    ) -> mm.VModelStatusInfo:
        """`sync`: a new or switched vmodel waits for its target's load (when one was asked
        for); a vmodel in transition waits until it flips or its target fails."""
        if status.status == _VStatus.DEFINED:
            if load:
                await self._ensure_loaded(status.activeModelId, context)
                return await self._vmodel_status(vmodel_id, context)
            return status
        remaining = context.time_remaining()
        budget = self.transition_wait if remaining is None else min(remaining, self.transition_wait)
        deadline = self.clock() + budget
        await self._ensure_loaded(status.targetModelId, context)  # the transition waits for the same load
        attempt = 0
        while status.status == _VStatus.TRANSITIONING and self.clock() < deadline:
            # the flip follows the load at once; poll for it (bounded, backing off:
            # 0.02 s doubling to 0.5 s, no jitter)
            delay = backoff_delay(attempt=attempt, rand=1.0, base=0.02, cap=0.5)
            await asyncio.sleep(min(delay, max(0.0, deadline - self.clock())))
            attempt += 1
            status = await self._vmodel_status(vmodel_id, context)
        return status

    async def deleteVModel(self, request: mm.DeleteVModelRequest, context: grpc.aio.ServicerContext) -> mm.DeleteVModelResponse:
        if not request.vModelId:
            raise InvalidArgument("must provide non-empty vModelId")
        current = await self._vmodel_status(request.vModelId, context)
        if current.status == _VStatus.NOT_FOUND or (request.owner and current.owner != request.owner):
            return mm.DeleteVModelResponse()  # upstream: nothing to delete is success
        await self._call(
            self.scheduler.DeleteVModel,
            pb.DeleteVModelRequest(vmodel_id=request.vModelId, owner=request.owner),
            context,
            cap=self.call_timeout,
        )
        return mm.DeleteVModelResponse()

    async def getVModelStatus(self, request: mm.GetVModelStatusRequest, context: grpc.aio.ServicerContext) -> mm.VModelStatusInfo:
        if not request.vModelId:
            raise InvalidArgument("must provide non-empty vModelId")
        status = await self._vmodel_status(request.vModelId, context)
        if request.owner and status.owner != request.owner:
            return mm.VModelStatusInfo()  # another owner's vmodel reads as not found
        return status


def add_to_server(
    server: grpc.aio.Server,
    scheduler_channel: grpc.aio.Channel,
    *,
    call_timeout_seconds: float = 30.0,
    load_timeout_seconds: float = 120.0,
) -> ModelMeshApi:
    """Serve `mmesh.ModelMesh` on `server`, calling the scheduler over `scheduler_channel`
    (owned by the caller), with ModelMeshApi's timeouts. Returns the servicer; `await
    servicer.close()` after the server stopped.

    The methods are registered ones (`add_registered_method_handlers`, via the generated
    helper), which gRPC matches before any generic handler: the router's catch-all
    other-RPC handler never sees them, whatever the order the handlers were added in."""
    servicer = ModelMeshApi(
        scheduler_pb2_grpc.SchedulerStub(scheduler_channel),
        call_timeout_seconds=call_timeout_seconds,
        load_timeout_seconds=load_timeout_seconds,
    )
    # errors mapped per method of this service only: the router's data-path calls on the same
    # server pay for no interceptor
    add_guarded(model_mesh_pb2_grpc.add_ModelMeshServicer_to_server, servicer, server)
    return servicer
