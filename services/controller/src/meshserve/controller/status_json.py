"""A CR's `.status` as JSON: `status.PredictorStatus` <-> what Kubernetes stores.

Pure, like `status`: no I/O. Parses the `/status` of a Predictor (`from_predictor_status`) or an
InferenceService (`from_isvc_status`, ModelMesh part under `.status.modelStatus`) into a
`PredictorStatus`, and renders the JSON to merge-patch into `/status` (`to_predictor_status`,
`to_isvc_status`).

Invariants:
* Unknown or missing values parse to the defaults of a fresh CR (Pending, UpToDate, no failure).
* Times are written in UTC with second precision (metav1.Time); `status` truncates the times it
  sets, so a status written and read back compares equal (no second write on the next reconcile).
* `lastFailureInfo: None` in a patch deletes the field; an InferenceService's `Ready` and
  `PredictorReady` conditions keep their `lastTransitionTime` while their value is unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from meshserve.controller.status import (
    FailureInfo,
    FailureReason,
    ModelState,
    PredictorStatus,
    TransitionStatus,
)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _enum(cls: type[enum.Enum], value: Any, default: Any) -> Any:
    try:
        return cls(value)
    except ValueError:
        return default


def _failure_from(raw: Any, *, id_key: str) -> FailureInfo | None:
    if not isinstance(raw, Mapping) or not raw.get("reason"):
        return None
    reason = _enum(FailureReason, raw.get("reason"), None)
    if reason is None:
        return None
    return FailureInfo(
        reason=reason, message=str(raw.get("message") or ""), model_id=str(raw.get(id_key) or ""),
        location=str(raw.get("location") or ""), time=parse_time(raw.get("time")),
    )


def _failure_to(info: FailureInfo | None, *, id_key: str) -> dict[str, Any] | None:
    if info is None:
        return None
    out: dict[str, Any] = {"reason": info.reason.value, "message": info.message}
    if info.model_id:
        out[id_key] = info.model_id
    if info.location:
        out["location"] = info.location
    if info.time is not None:
        out["time"] = format_time(info.time)
    return out


def from_predictor_status(raw: Any) -> PredictorStatus:
    raw = raw if isinstance(raw, Mapping) else {}
    return PredictorStatus(
        available=bool(raw.get("available", False)),
        active_model_state=_enum(ModelState, raw.get("activeModelState") or "Pending", ModelState.PENDING),
        target_model_state=_enum(ModelState, raw.get("targetModelState") or "", ModelState.EMPTY),
        transition_status=_enum(TransitionStatus, raw.get("transitionStatus") or "UpToDate", TransitionStatus.UP_TO_DATE),
        last_failure_info=_failure_from(raw.get("lastFailureInfo"), id_key="modelId"),
        total_copies=int(raw.get("totalCopies") or 0),
        failed_copies=int(raw.get("failedCopies") or 0),
        grpc_endpoint=str(raw.get("grpcEndpoint") or ""),
        http_endpoint=str(raw.get("httpEndpoint") or ""),
    )


def to_predictor_status(status: PredictorStatus) -> dict[str, Any]:
    """Predictor `.status` as a merge patch (None deletes lastFailureInfo)."""
    return {
        "available": status.available,
        "activeModelState": status.active_model_state.value,
        "targetModelState": status.target_model_state.value,
        "transitionStatus": status.transition_status.value,
        "lastFailureInfo": _failure_to(status.last_failure_info, id_key="modelId"),
        "totalCopies": status.total_copies,
        "failedCopies": status.failed_copies,
        "grpcEndpoint": status.grpc_endpoint,
        "httpEndpoint": status.http_endpoint,
    }


def _sub(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, Mapping) else {}


def from_isvc_status(raw: Any) -> PredictorStatus:
    raw = raw if isinstance(raw, Mapping) else {}
    ms = _sub(raw, "modelStatus")
    states = _sub(ms, "states")
    copies = _sub(ms, "copies")
    ready = any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True" for c in raw.get("conditions") or []
    )
    predictor = _sub(_sub(raw, "components"), "predictor")
    return PredictorStatus(
        available=ready,
        # upstream: an ISVC without an active state yet counts as Pending
        active_model_state=_enum(ModelState, states.get("activeModelState") or "Pending", ModelState.PENDING),
        target_model_state=_enum(ModelState, states.get("targetModelState") or "", ModelState.EMPTY),
        transition_status=_enum(TransitionStatus, ms.get("transitionStatus") or "UpToDate", TransitionStatus.UP_TO_DATE),
        last_failure_info=_failure_from(ms.get("lastFailureInfo"), id_key="modelRevisionName"),
        total_copies=int(copies.get("totalCopies") or 0),
        failed_copies=int(copies.get("failedCopies") or 0),
        grpc_endpoint=str(predictor.get("grpcUrl") or ""),
        http_endpoint=str(predictor.get("restUrl") or ""),
    )


def _condition(ctype: str, ok: bool, previous: Any, now: datetime) -> dict[str, Any]:
    value = "True" if ok else "False"
    last = now
    for cond in previous if isinstance(previous, list) else []:
        if isinstance(cond, Mapping) and cond.get("type") == ctype and cond.get("status") == value:
            last = parse_time(cond.get("lastTransitionTime")) or now
    return {"type": ctype, "status": value, "lastTransitionTime": format_time(last)}


def to_isvc_status(
    status: PredictorStatus, *, previous_raw: Any, now: datetime, observed_generation: int | None = None
) -> dict[str, Any]:
    """InferenceService `.status` merge patch: modelStatus, url/components when available, conditions."""
    previous_conditions = previous_raw.get("conditions") if isinstance(previous_raw, Mapping) else None
    out: dict[str, Any] = {
        "modelStatus": {
            "transitionStatus": status.transition_status.value,
            "states": {
                "activeModelState": status.active_model_state.value,
                "targetModelState": status.target_model_state.value,
            },
            "copies": {"failedCopies": status.failed_copies, "totalCopies": status.total_copies},
            "lastFailureInfo": _failure_to(status.last_failure_info, id_key="modelRevisionName"),
        },
        "conditions": [
            _condition("PredictorReady", status.available, previous_conditions, now),
            _condition("Ready", status.available, previous_conditions, now),
        ],
    }
    if status.available:
        out["url"] = status.grpc_endpoint
        out["components"] = {
            "predictor": {"url": status.grpc_endpoint, "grpcUrl": status.grpc_endpoint, "restUrl": status.http_endpoint}
        }
    else:
        out["url"] = None
        out["components"] = None
    if observed_generation is not None:
        out["observedGeneration"] = observed_generation
    return out
