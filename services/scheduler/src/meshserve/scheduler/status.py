"""A model's status as the scheduler reports it: ModelMesh's ModelStatus names, the
`ModelState` value the service returns, and when a recorded load failure happened.

Shared by `service.py`, `vmodels.py` and both transports (`server.py`, `api.py`), so that
none of them imports another for these names. Values and pure functions only: no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from meshserve.scheduler.models import CopyRecord

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
