"""A model's status as the scheduler reports it: ModelMesh's ModelStatus names, the
`ModelState` value the service returns, and when a recorded load failure happened.

Shared by the use cases (`copies.py`, `service.py`, `vmodels.py`, `loading.py`) and both
transports (`server.py`, `api.py`), so that none of them imports another for these names.
Values and pure functions only: no I/O; may import only `meshserve.scheduler.models`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from meshserve.scheduler.models import CopyRecord, CopyState

# statuses (ModelMesh's ModelStatus names)
NOT_FOUND, NOT_LOADED, LOADING, LOADED, LOADING_FAILED = (
    "NOT_FOUND",
    "NOT_LOADED",
    "LOADING",
    "LOADED",
    "LOADING_FAILED",
)


@dataclass(frozen=True)
class ModelState:
    status: str
    errors: tuple[str, ...]
    copies: tuple[CopyRecord, ...]
    failure: dict[str, Any] | None = None


def failure_time(failure: dict[str, Any] | None) -> dt.datetime | None:
    if not failure:
        return None
    return dt.datetime.fromtimestamp(float(failure.get("time_ms", 0)) / 1000, dt.UTC)


def active_failure(failure: dict[str, Any] | None, *, now: float, backoff_seconds: float) -> dict[str, Any] | None:
    """The recorded load failure while its back-off lasts (`now` in seconds), else None."""
    if not failure:
        return None
    age = now - float(failure.get("time_ms", 0)) / 1000
    return failure if age < backoff_seconds else None


def model_status(copies: tuple[CopyRecord, ...], failure: dict[str, Any] | None) -> ModelState:
    """A registered model's state from its copies and its active load failure."""
    if any(c.state == CopyState.LOADED.value for c in copies):
        status = LOADED
    elif copies:
        status = LOADING
    elif failure is not None:
        status = LOADING_FAILED
    else:
        status = NOT_LOADED
    errors = (failure["message"],) if failure and status == LOADING_FAILED else ()
    return ModelState(status, errors, copies, failure)
