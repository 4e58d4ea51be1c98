"""CR status from scheduler state, exactly as ModelMesh Serving computes it (facts §1.2-1.5).

Pure: inputs are the previous CR status, the scheduler's view of the vmodel (our own frozen
mirror of `VModelStatusInfo`, no protobuf types here) and `now`; output is the new status.
`status_json` turns it into the JSON to merge-patch into `/status` of a Predictor or an
InferenceService (and parses what the CR carries back into a `PredictorStatus`).

Rules kept from upstream `predictor_controller.go`:
* model status NOT_LOADED/LOADING/LOADED/LOADING_FAILED -> Standby/Loading/Loaded/FailedToLoad; no
  status (vmodel not found) -> Pending. vmodel DEFINED/TRANSITIONING/TRANSITION_FAILED ->
  UpToDate/InProgress/BlockedByFailedLoad, and InProgress again while the target is LOADING.
* The "no running instances that meet the label requirements" error decodes to Loading +
  RuntimeUnhealthy (a runtime exists but has no ready pod), or FailedToLoad + RuntimeNotRecognized
  (`rt:` label nobody has) / NoSupportingRuntime (`[_no_runtime]`).
* `targetModelState` is set only when the target differs from the active model.
* `available = active != "" and active != FailedToLoad and not waiting for a runtime`.
* lastFailureInfo: for ModelLoadFailed, location and time come from the first LOADING_FAILED copy;
  for other reasons time is `now`, but an existing time less than 20 s old is kept (no status
  ping-pong). A retry that is back in Loading while waiting for a runtime keeps the old failure.
* failedCopies counts LOADING_FAILED copies; totalCopies all copy infos, active + target when
  different; copies are not counted when the failure is not about copies.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

NO_HOME_PREFIX = "There are no running instances that meet the label requirements of type "
NO_RUNTIME_LABEL = "_no_runtime"
MSG_WAITING_SUPPORTING = "Waiting for supporting runtime Pod to become available"
MSG_WAITING_ANY = "Waiting for runtime Pod to become available"
MSG_NOT_RECOGNIZED = "Specified runtime name not recognized"
MSG_NO_SUPPORTING = "No ServingRuntime supports specified model type and/or protocol"
MSG_OTHER_SOURCE = "Predictor already exists with the same name from a different source"
FAILURE_TIME_REFRESH = timedelta(seconds=20)


class ModelState(enum.StrEnum):
    EMPTY = ""
    PENDING = "Pending"
    STANDBY = "Standby"
    LOADING = "Loading"
    LOADED = "Loaded"
    FAILED_TO_LOAD = "FailedToLoad"


class TransitionStatus(enum.StrEnum):
    UP_TO_DATE = "UpToDate"
    IN_PROGRESS = "InProgress"
    BLOCKED_BY_FAILED_LOAD = "BlockedByFailedLoad"
    INVALID_SPEC = "InvalidSpec"


class FailureReason(enum.StrEnum):
    MODEL_LOAD_FAILED = "ModelLoadFailed"
    RUNTIME_UNHEALTHY = "RuntimeUnhealthy"
    NO_SUPPORTING_RUNTIME = "NoSupportingRuntime"
    RUNTIME_NOT_RECOGNIZED = "RuntimeNotRecognized"
    INVALID_PREDICTOR_SPEC = "InvalidPredictorSpec"


class ModelStatusCode(enum.IntEnum):
    """Mirror of meshserve.v1.ModelStatus (= ModelMesh's ModelStatusInfo.ModelStatus)."""

    NOT_FOUND = 0
    NOT_LOADED = 1
    LOADING = 2
    LOADED = 3
    LOADING_FAILED = 4
    UNKNOWN = 5


class VModelStatusCode(enum.IntEnum):
    """Mirror of meshserve.v1.VModelStatus."""

    NOT_FOUND = 0
    DEFINED = 1
    TRANSITIONING = 2
    TRANSITION_FAILED = 3
    UNKNOWN = 5


_MODEL_STATE = {
    ModelStatusCode.NOT_LOADED: ModelState.STANDBY,
    ModelStatusCode.LOADING: ModelState.LOADING,
    ModelStatusCode.LOADED: ModelState.LOADED,
    ModelStatusCode.LOADING_FAILED: ModelState.FAILED_TO_LOAD,
}
_TRANSITION = {
    VModelStatusCode.DEFINED: TransitionStatus.UP_TO_DATE,
    VModelStatusCode.TRANSITIONING: TransitionStatus.IN_PROGRESS,
    VModelStatusCode.TRANSITION_FAILED: TransitionStatus.BLOCKED_BY_FAILED_LOAD,
}


@dataclass(frozen=True)
class CopyInfo:
    location: str
    status: ModelStatusCode
    time_ms: int = 0


@dataclass(frozen=True)
class ModelStatusView:
    status: ModelStatusCode
    errors: tuple[str, ...] = ()
    copies: tuple[CopyInfo, ...] = ()


@dataclass(frozen=True)
class VModelView:
    status: VModelStatusCode
    active_model_id: str = ""
    target_model_id: str = ""
    active: ModelStatusView | None = None
    target: ModelStatusView | None = None


@dataclass(frozen=True)
class FailureInfo:
    reason: FailureReason
    message: str
    model_id: str = ""
    location: str = ""
    time: datetime | None = None


@dataclass(frozen=True)
class PredictorStatus:
    """The ModelMesh part of a CR's status (Predictor `.status`, ISVC `.status.modelStatus`)."""

    available: bool = False
    active_model_state: ModelState = ModelState.PENDING
    target_model_state: ModelState = ModelState.EMPTY
    transition_status: TransitionStatus = TransitionStatus.UP_TO_DATE
    last_failure_info: FailureInfo | None = None
    total_copies: int = 0
    failed_copies: int = 0
    grpc_endpoint: str = ""
    http_endpoint: str = ""

    @property
    def waiting_for_runtime(self) -> bool:
        return self.last_failure_info is not None and self.last_failure_info.reason is FailureReason.RUNTIME_UNHEALTHY

    def with_availability(self) -> PredictorStatus:
        available = (
            self.active_model_state not in (ModelState.EMPTY, ModelState.FAILED_TO_LOAD) and not self.waiting_for_runtime
        )
        return replace(self, available=available)


# --- decoding --------------------------------------------------------------------------------------


def decode_model_state(view: ModelStatusView | None) -> tuple[ModelState, FailureReason | None, str]:
    """(state, failure reason, message) for one model's scheduler status."""
    if view is None:
        return ModelState.PENDING, None, ""
    state = _MODEL_STATE.get(view.status, ModelState.EMPTY)
    reason: FailureReason | None = None
    msg = ""
    if view.errors:
        reason, msg = FailureReason.MODEL_LOAD_FAILED, view.errors[0]
    if state is not ModelState.FAILED_TO_LOAD:
        return state, reason, msg
    if not msg.startswith(NO_HOME_PREFIX):
        return ModelState.FAILED_TO_LOAD, FailureReason.MODEL_LOAD_FAILED, msg
    if not msg.endswith(f"[{NO_RUNTIME_LABEL}]"):
        return ModelState.LOADING, FailureReason.RUNTIME_UNHEALTHY, MSG_WAITING_SUPPORTING
    if msg[len(NO_HOME_PREFIX):].startswith("rt:"):
        return ModelState.FAILED_TO_LOAD, FailureReason.RUNTIME_NOT_RECOGNIZED, MSG_NOT_RECOGNIZED
    return ModelState.FAILED_TO_LOAD, FailureReason.NO_SUPPORTING_RUNTIME, MSG_NO_SUPPORTING


def _count(view: ModelStatusView | None) -> tuple[int, int]:
    if view is None:
        return 0, 0
    return len(view.copies), sum(1 for c in view.copies if c.status is ModelStatusCode.LOADING_FAILED)


def _counts_copies(reason: FailureReason | None) -> bool:
    return reason is None or reason is FailureReason.MODEL_LOAD_FAILED


def status_from_vmodel(
    previous: PredictorStatus,
    vmodel: VModelView,
    *,
    now: datetime,
    grpc_endpoint: str,
    http_endpoint: str,
    include_transition_and_failure: bool = True,
) -> PredictorStatus:
    """New status after a SetVModel / GetVModelStatus answer (upstream `updatePredictorStatusFromVModel`)."""
    status = previous
    active_state, active_reason, active_msg = decode_model_state(vmodel.active)
    if active_state is not ModelState.EMPTY:
        status = replace(status, active_model_state=active_state)
    total = failed = 0
    if _counts_copies(active_reason):
        total, failed = _count(vmodel.active)
    target_view: ModelStatusView | None
    if vmodel.active_model_id == vmodel.target_model_id:
        target_view, target_reason, target_msg = vmodel.active, active_reason, active_msg
        status = replace(status, target_model_state=ModelState.EMPTY)
    else:
        target_view = vmodel.target
        target_reason, target_msg = None, ""
        if target_view is not None:
            target_state, target_reason, target_msg = decode_model_state(target_view)
            status = replace(status, target_model_state=target_state)
            if _counts_copies(target_reason):
                t_total, t_failed = _count(target_view)
                total, failed = total + t_total, failed + t_failed

    if include_transition_and_failure:
        transition = _TRANSITION.get(vmodel.status, TransitionStatus.UP_TO_DATE)
        if (
            transition is TransitionStatus.BLOCKED_BY_FAILED_LOAD
            and target_view is not None
            and target_view.status is ModelStatusCode.LOADING
        ):
            transition = TransitionStatus.IN_PROGRESS   # "nowhere to load" converted back to Loading
        status = replace(status, transition_status=transition)
        failure: FailureInfo | None = None
        if target_view is not None and target_view.status is not ModelStatusCode.LOADED:
            if target_reason is None:
                if status.waiting_for_runtime:
                    failure = status.last_failure_info   # retrying: keep the last failure
            else:
                failure = _failure(
                    reason=target_reason, message=target_msg, model_id=vmodel.target_model_id,
                    target=target_view, previous=previous.last_failure_info, now=now,
                )
        status = replace(status, last_failure_info=failure)

    status = replace(
        status, total_copies=total, failed_copies=failed, grpc_endpoint=grpc_endpoint, http_endpoint=http_endpoint
    )
    return status.with_availability()


def _failure(
    *, reason: FailureReason, message: str, model_id: str, target: ModelStatusView,
    previous: FailureInfo | None, now: datetime,
) -> FailureInfo:
    if reason is FailureReason.MODEL_LOAD_FAILED:
        for copy in target.copies:
            if copy.status is ModelStatusCode.LOADING_FAILED:
                # CR times have second precision (metav1.Time): truncate so status round-trips
                when = datetime.fromtimestamp(copy.time_ms // 1000, tz=UTC) if copy.time_ms else None
                return FailureInfo(reason=reason, message=message, model_id=model_id, location=copy.location, time=when)
        return FailureInfo(reason=reason, message=message, model_id=model_id)
    return FailureInfo(reason=reason, message=message, model_id=model_id, time=_sticky_time(previous, now))


def _sticky_time(previous: FailureInfo | None, now: datetime) -> datetime:
    if previous is None or previous.time is None or now - previous.time > FAILURE_TIME_REFRESH:
        return now.replace(microsecond=0)
    return previous.time


def invalid_spec_status(
    previous: PredictorStatus, *, message: str, model_id: str, vmodel: VModelView | None,
    now: datetime, grpc_endpoint: str, http_endpoint: str,
) -> PredictorStatus:
    """Spec rejected: states still follow the scheduler (if it knows an older version), but the
    transition is InvalidSpec and the failure InvalidPredictorSpec with the validation message."""
    status = previous
    if vmodel is not None:
        status = status_from_vmodel(
            status, vmodel, now=now, grpc_endpoint=grpc_endpoint, http_endpoint=http_endpoint,
            include_transition_and_failure=False,
        )
    status = replace(
        status,
        transition_status=TransitionStatus.INVALID_SPEC,
        last_failure_info=FailureInfo(reason=FailureReason.INVALID_PREDICTOR_SPEC, message=message, model_id=model_id),
    )
    return status.with_availability()


def scheduler_unreachable_status(previous: PredictorStatus, *, model_id: str, now: datetime) -> PredictorStatus:
    """No scheduler answered (upstream: "produced zero addresses"): wait for the runtime."""
    failure = FailureInfo(
        reason=FailureReason.RUNTIME_UNHEALTHY, message=MSG_WAITING_ANY, model_id=model_id,
        time=_sticky_time(previous.last_failure_info, now),
    )
    return replace(previous, last_failure_info=failure).with_availability()


def other_owner_status(previous: PredictorStatus, *, now: datetime) -> PredictorStatus:
    """SetVModel said ALREADY_EXISTS: the name belongs to a CR of the other kind."""
    failure = FailureInfo(reason=FailureReason.INVALID_PREDICTOR_SPEC, message=MSG_OTHER_SOURCE)
    return replace(previous, last_failure_info=failure).with_availability()


def selection_failure_status(
    previous: PredictorStatus, *, reason: FailureReason, message: str, model_id: str, now: datetime,
    grpc_endpoint: str, http_endpoint: str,
) -> PredictorStatus:
    """No runtime can serve the model (known before asking the scheduler)."""
    failure = FailureInfo(reason=reason, message=message, model_id=model_id, time=_sticky_time(previous.last_failure_info, now))
    state = ModelState.FAILED_TO_LOAD if reason is not FailureReason.RUNTIME_UNHEALTHY else ModelState.LOADING
    return replace(
        previous, active_model_state=state, target_model_state=ModelState.EMPTY,
        transition_status=TransitionStatus.UP_TO_DATE, last_failure_info=failure,
        total_copies=0, failed_copies=0, grpc_endpoint=grpc_endpoint, http_endpoint=http_endpoint,
    ).with_availability()


def requeue_after(status: PredictorStatus, *, scheduler_reachable: bool) -> float | None:
    """Seconds until the next poll: 3 s while waiting for a runtime/scheduler, 1 s while the active
    model (upstream) or a transition's target (meshserve: no registry watch covers a failed target)
    is Loading."""
    if not scheduler_reachable or status.waiting_for_runtime:
        return 3.0
    if status.active_model_state is ModelState.LOADING or status.target_model_state is ModelState.LOADING:
        return 1.0
    return None


def load_now(status: PredictorStatus, *, deleting: bool) -> bool:
    """SetVModel's loadNow (upstream): new, failed, transitioning, or Loading while waiting for a runtime."""
    return not deleting and (
        status.active_model_state in (ModelState.PENDING, ModelState.FAILED_TO_LOAD)
        or status.target_model_state is not ModelState.EMPTY
        or (status.active_model_state is ModelState.LOADING and status.waiting_for_runtime)
    )
