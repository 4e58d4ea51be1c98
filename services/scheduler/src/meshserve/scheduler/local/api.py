"""The local-mode resource routes of the admin API: `POST /v1/resources` (what
`meshserve apply -f` sends), list, long-poll watch, get, delete and status patches; the
local controller watches them. Kubernetes-style documents are stored as they are
(`local.resources.ResourceStore`), validated first, all or nothing; a Secret carried in
local mode has its values hidden unless asked for with `secretValues=true`.

May import: `meshserve.common`, `local.resources`, `rest` and FastAPI. Never imports the
use cases or the other transports; `api.create_app` installs these routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.params import Depends as DependsParam

from meshserve.common.errors import InvalidArgument
from meshserve.common.labels import LOCAL_SECRET_LABEL
from meshserve.scheduler.local.resources import KINDS, Applied, ResourceStore, identify
from meshserve.scheduler.rest import NO_NUL_PATTERN, ErrorBody, NamePath, answers, json_body

_EXPIRED = (
    "410 Gone: `resourceVersion` (not 0) is older than the oldest deletion still remembered "
    "(deleted resources' tombstones are kept for `MESHSERVE_SCHEDULER_RESOURCE_TOMBSTONE_RETENTION_HOURS`); "
    "list again and watch from the list's `resourceVersion`"
)


def resource_routes(
    app: FastAPI,
    store: ResourceStore,
    *,
    mutate: list[DependsParam],
    secret_values: Callable[..., Any],
) -> None:
    """Add the /v1/resources routes to `app` (`mutate`: the admin token check;
    `secret_values`: the dependency reading `secretValues`, checked against the token)."""

    @app.post(
        "/v1/resources",
        dependencies=mutate,
        responses=answers(401, 409),
        openapi_extra=json_body(
            {"anyOf": [RESOURCE_SCHEMA, {"type": "array", "items": RESOURCE_SCHEMA}]},
            "one resource document (a Kubernetes-style object) or a list of them; all are validated before any is stored",
        ),
    )
    async def apply_resources(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as err:
            raise InvalidArgument("the body must be a JSON object or a JSON list of objects") from err
        docs = body if isinstance(body, list) else [body]
        for doc in docs:
            _check_document(doc)
            identify(doc)  # all or nothing: validate every document first
        return {"items": [_applied_json(await store.apply(doc)) for doc in docs]}

    @app.get("/v1/resources", responses=answers())
    async def list_resources(
        kind: Annotated[str | None, Query(pattern=NO_NUL_PATTERN)] = None,
        namespace: Annotated[str | None, Query(pattern=NO_NUL_PATTERN)] = None,
        reveal: bool = Depends(secret_values),
    ) -> dict[str, Any]:
        items, version = await store.list(kind=kind, namespace=namespace)
        return {"items": [_shown(i, reveal) for i in items], "resourceVersion": version}

    @app.get(
        "/v1/resources:watch",
        responses={**answers(), 410: {"model": ErrorBody, "description": _EXPIRED}},
        summary="Long poll for resource changes",
        description=(
            "Not a stream: one JSON answer. Answers as soon as there are changes after `resourceVersion`, "
            "else after `timeoutSeconds` (at most 300) with no events; call again from the `resourceVersion` "
            "answered. Clients need a read timeout above `timeoutSeconds`. " + _EXPIRED + "."
        ),
    )
    async def watch_resources(
        resourceVersion: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
        timeoutSeconds: Annotated[float, Query(ge=0, le=300, allow_inf_nan=False)] = 30,
        reveal: bool = Depends(secret_values),
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeoutSeconds
        while True:
            changes = await store.changes_since(resourceVersion)
            if changes or asyncio.get_running_loop().time() >= deadline:
                last = changes[-1][2] if changes else resourceVersion
                return {
                    "events": [{"type": t, "object": _shown(o, reveal)} for t, o, _ in changes],
                    "resourceVersion": str(last),
                }
            await asyncio.sleep(0.2)

    @app.get("/v1/resources/{kind}/{namespace}/{name}", responses=answers(404))
    async def get_resource(
        kind: NamePath, namespace: NamePath, name: NamePath, reveal: bool = Depends(secret_values)
    ) -> dict[str, Any]:
        return _shown(await store.get(kind, "" if namespace == "_" else namespace, name), reveal)

    @app.delete("/v1/resources/{kind}/{namespace}/{name}", dependencies=mutate, responses=answers(401, 404))
    async def delete_resource(kind: NamePath, namespace: NamePath, name: NamePath) -> dict[str, Any]:
        await store.delete(kind, "" if namespace == "_" else namespace, name)
        return {"deleted": True}

    @app.patch(
        "/v1/resources/{kind}/{namespace}/{name}/status",
        dependencies=mutate,
        responses=answers(401, 404, 409),
        openapi_extra=json_body({"type": "object"}, "a JSON merge patch of the resource's status"),
    )
    async def patch_status(kind: NamePath, namespace: NamePath, name: NamePath, request: Request) -> dict[str, Any]:
        try:
            patch = await request.json()
        except ValueError as err:
            raise InvalidArgument("the body must be a JSON merge patch of status") from err
        if not isinstance(patch, dict):
            raise InvalidArgument("the body must be a JSON object (a merge patch of status)")
        return await store.patch_status(kind, "" if namespace == "_" else namespace, name, patch)


RESOURCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kind", "metadata"],
    "properties": {
        "kind": {"type": "string", "enum": sorted(KINDS)},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "namespace": {"type": ["string", "null"]},
            },
        },
    },
}


def _check_document(doc: Any) -> None:
    """What RESOURCE_SCHEMA states about types; `identify` checks presence and kind."""
    if isinstance(doc, dict) and doc.get("kind") is not None and not isinstance(doc["kind"], str):
        raise InvalidArgument("kind must be a string")
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        return  # identify() names the problem
    for key in ("name", "namespace"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise InvalidArgument(f"metadata.{key} must be a string")


def _shown(obj: dict[str, Any], reveal: bool) -> dict[str, Any]:
    """`obj` as the admin API shows it: a Secret carried in local mode has its values hidden
    unless the caller asked for them (the controller and the CLI's `get secret` do)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if reveal or obj.get("kind") != "ConfigMap" or labels.get(LOCAL_SECRET_LABEL) != "true":
        return obj
    return {**obj, "data": {key: "<hidden>" for key in obj.get("data") or {}}}


def _applied_json(a: Applied) -> dict[str, Any]:
    return {
        "kind": a.kind,
        "namespace": a.namespace,
        "name": a.name,
        "resourceVersion": a.resource_version,
        "action": a.action,
    }
