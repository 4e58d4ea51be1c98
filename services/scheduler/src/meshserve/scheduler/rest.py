"""What the scheduler's REST routes share: input patterns and bounds, the error body and
the OpenAPI `responses=` each operation declares (`answers`), and `json_body` for a
handler that reads its raw body.

Used by the admin API (`api.py`) and the local-mode resource routes (`local/api.py`), so
neither imports the other for them. May import: FastAPI and pydantic only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, Field

MODEL_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,252}$"
"""What `meshserve.common.storage.check_model_id` allows (a model id becomes a folder
name): letters, digits, '-', '_' and '.', 1..253 characters, not starting with '.'."""
NO_NUL_PATTERN = r"^[^\x00]*$"
"""Postgres text and JSONB cannot hold NUL, so no stored string may contain one."""
MAX_OFFSET = 1_000_000_000
"""Far beyond any real listing, far below Postgres' bigint OFFSET limit."""

ModelIdPath = Annotated[str, Path(pattern=MODEL_ID_PATTERN, description="a model id (see POST /v1/models)")]
NameText = Annotated[str, Field(min_length=1, max_length=253, pattern=NO_NUL_PATTERN)]
NamePath = Annotated[str, Path(min_length=1, max_length=253, pattern=NO_NUL_PATTERN)]
Text = Annotated[str, Field(pattern=NO_NUL_PATTERN)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
Limit = Annotated[int, Query(ge=1, le=1000, description="items to return")]


class ErrorBody(BaseModel):
    error: str


_WHY = {
    400: "the request breaks a rule the schema cannot state; `error` says which",
    401: "a token is configured and the request lacks `Authorization: Bearer <token>`",
    404: "no such object",
    409: "the object already exists or conflicts with another",
    412: "the object is not in a state that allows this",
    503: "Redis or Postgres is unavailable; retry later",
    504: "a runtime pod did not answer in time",
    507: "no runtime pod has room for the model",
}


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the error statuses an operation can answer (400 and 503
    always: the registry refuses values it cannot store, and the stores can be down)."""
    return {c: {"model": ErrorBody, "description": _WHY[c]} for c in sorted({400, 503, *codes})}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """`openapi_extra` for a handler that reads the raw request body itself."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }
