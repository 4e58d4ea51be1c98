"""Admin REST API of the scheduler (FastAPI, OpenAPI at /docs).

Inspect and steer placement: models, vmodels, pods, runtimes, events. Mutations need
`Authorization: Bearer <token>` when `MESHSERVE_SCHEDULER_ADMIN_TOKEN` is set. Errors
come back as `{"error": "..."}` with the matching HTTP status; bad input is a 4xx
(FastAPI's 422 names the missing or invalid field), never a 500.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from redis.exceptions import RedisError

from meshserve.common.errors import InvalidArgument, MeshError, NotFound, Unauthenticated
from meshserve.scheduler.live import redis_unavailable
from meshserve.scheduler.registry import RuntimeRecord
from meshserve.scheduler.resources import Applied, ResourceStore, identify
from meshserve.scheduler.service import ModelSpec, SchedulerService
from meshserve.scheduler.status import (
    LOADED,
    LOADING,
    LOADING_FAILED,
    NOT_LOADED,
    ModelState,
    failure_time,
)

# ModelMesh Serving's CR words for the model states
CR_STATE = {NOT_LOADED: "Standby", LOADING: "Loading", LOADED: "Loaded", LOADING_FAILED: "FailedToLoad"}


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ModelCreate(Camel):
    """A model to register. `name` becomes the model id clients call."""

    name: str = Field(min_length=1, max_length=253, description="model id, e.g. example-sklearn-isvc")
    format: str = Field(min_length=1, description="model format: sklearn, xgboost, lightgbm, ...")
    storage_uri: str | None = Field(default=None, description="s3://bucket/key, pvc://name/path, https://...")
    storage_key: str | None = Field(default=None, description="key in the storage-config secret")
    storage_path: str | None = None
    storage_params: dict[str, str] = Field(default_factory=dict)
    runtime: str | None = Field(default=None, description="runtime name; empty: auto-select by format")
    format_version: str | None = None
    protocol_version: str | None = None
    size_bytes: int = Field(default=0, ge=0, description="declared memory size, if known")
    min_copies: int = Field(default=0, ge=0, le=100)
    max_copies: int = Field(default=0, ge=0, le=100)
    load_now: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from meshserve.common.storage import check_model_id

        try:
            return check_model_id(v)
        except MeshError as err:
            raise ValueError(err.message) from err


class VModelSet(Camel):
    target_model_id: str = Field(min_length=1)
    owner: str = ""
    auto_delete: bool = False
    force: bool = False


def create_app(service: SchedulerService) -> FastAPI:
    settings = service.settings
    app = FastAPI(
        title="meshserve scheduler admin API",
        version="0.1.0",
        description="Inspect and steer model placement. Mutations need a bearer token when one is configured.",
    )

    @app.exception_handler(MeshError)
    async def _mesh_error(request: Request, err: MeshError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.http_status)

    @app.exception_handler(RedisError)
    async def _redis_error(request: Request, err: RedisError) -> JSONResponse:
        mapped = redis_unavailable(err)
        assert mapped is not None
        return JSONResponse({"error": mapped.message}, status_code=mapped.http_status)

    async def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        token = settings.admin_token
        if token is None:
            return
        expected = f"Bearer {token.get_secret_value()}"
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise Unauthenticated("this admin API needs 'Authorization: Bearer <token>' for changes")

    mutate = [Depends(require_token)]

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        problems = []
        for name, check in (("redis", service.live.ping), ("postgres", service.registry.ping)):
            try:
                await check()
            except MeshError as err:
                problems.append(f"{name}: {err.message}")
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def model_view(model_id: str, *, events: bool) -> dict[str, Any]:
        record = await service.registry.get_model(model_id)
        state = await service.model_state(model_id, record)
        hits, last_used_ms = await service.live.usage(model_id)
        rate = (await service.live.rates_per_minute([model_id])).get(model_id, 0.0)
        view = _model_json(record, state, hits=hits, last_used_ms=last_used_ms, rate=rate)
        if events:
            view["events"] = [_event_json(e) for e in await service.registry.list_events(model_id=model_id, limit=10)]
        return view

    @app.post("/v1/models", status_code=201, dependencies=mutate)
    async def register(body: ModelCreate) -> dict[str, Any]:
        await service.register_model(
            ModelSpec(
                model_id=body.name,
                model_type=body.format,
                model_type_version=body.format_version or "",
                runtime=body.runtime or "",
                protocol_version=body.protocol_version or "",
                storage_uri=body.storage_uri or "",
                storage_key=body.storage_key or "",
                storage_path=body.storage_path or "",
                storage_params=body.storage_params,
                declared_size=body.size_bytes,
                min_copies=body.min_copies,
                max_copies=body.max_copies,
            ),
            load_now=body.load_now,
        )
        return await model_view(body.name, events=False)

    @app.get("/v1/models")
    async def list_models(
        offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        records, total = await service.registry.list_models(offset=offset, limit=limit)
        items = []
        for record in records:
            state = await service.model_state(record.id, record)
            hits, last_used_ms = await service.live.usage(record.id)
            items.append(_model_json(record, state, hits=hits, last_used_ms=last_used_ms))
        return {"items": items, "total": total, "offset": offset, "limit": limit}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return await model_view(model_id, events=True)

    @app.delete("/v1/models/{model_id}", status_code=204, dependencies=mutate, response_class=Response, response_model=None)
    async def delete_model(model_id: str) -> None:
        await service.unregister_model(model_id)

    @app.post("/v1/models/{model_id}:load", dependencies=mutate)
    async def load(model_id: str) -> dict[str, Any]:
        await service.retry_load(model_id)
        return await model_view(model_id, events=False)

    @app.post("/v1/models/{model_id}:unload", dependencies=mutate)
    async def unload(model_id: str) -> dict[str, Any]:
        await service.registry.get_model(model_id)
        n = await service.unload(model_id)
        return {"unloaded": n, **await model_view(model_id, events=False)}

    @app.get("/v1/vmodels")
    async def list_vmodels(
        offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        records, total = await service.registry.list_vmodels(offset=offset, limit=limit)
        return {
            "items": [
                {"id": r.id, "owner": r.owner, "activeModelId": r.active_model_id, "targetModelId": r.target_model_id}
                for r in records
            ],
            "total": total,
            "offset": offset,
            "limit": limit,
        }

    @app.put("/v1/vmodels/{vmodel_id}", dependencies=mutate)
    async def set_vmodel(vmodel_id: str, body: VModelSet) -> dict[str, Any]:
        await service.vmodels.set_vmodel(
            vmodel_id=vmodel_id,
            target_model_id=body.target_model_id,
            owner=body.owner,
            auto_delete=body.auto_delete,
            force=body.force,
        )
        return await vmodel_view(vmodel_id)

    async def vmodel_view(vmodel_id: str) -> dict[str, Any]:
        status, record, active, target = await service.vmodels.vmodel_state(vmodel_id)
        if record is None:
            raise NotFound(f"vmodel {vmodel_id!r} not found")
        return {
            "id": vmodel_id,
            "owner": record.owner,
            "status": status,
            "activeModelId": record.active_model_id,
            "targetModelId": record.target_model_id or None,
            "activeState": CR_STATE.get(active.status, active.status) if active else None,
            "targetState": CR_STATE.get(target.status, target.status) if target else None,
            "targetErrors": list(target.errors) if target else [],
        }

    @app.get("/v1/vmodels/{vmodel_id}")
    async def get_vmodel(vmodel_id: str) -> dict[str, Any]:
        return await vmodel_view(vmodel_id)

    @app.delete("/v1/vmodels/{vmodel_id}", status_code=204, dependencies=mutate, response_class=Response, response_model=None)
    async def delete_vmodel(vmodel_id: str) -> None:
        if await service.registry.get_vmodel(vmodel_id) is None:
            raise NotFound(f"vmodel {vmodel_id!r} not found")
        await service.vmodels.delete_vmodel(vmodel_id)

    @app.get("/v1/pods")
    async def list_pods() -> dict[str, Any]:
        items = []
        for snap in (await service.live.placement_snapshot(await service.live.pod_ids())).pods:
            pod, allocations = snap.pod, snap.allocations
            items.append(
                {
                    "id": pod.pod_id,
                    "runtime": pod.runtime,
                    "capacityBytes": pod.capacity,
                    "allocatedBytes": pod.allocated,
                    "measuredUsedBytes": pod.used,
                    "loading": pod.loading,
                    "maxLoadingConcurrency": pod.max_loading,
                    "draining": pod.draining,
                    "lastHeartbeat": _ms_iso(pod.heartbeat_ms),
                    "grpcAddress": pod.grpc_address,
                    "models": [{"id": m, "bytes": b} for m, b in sorted(allocations.items())],
                }
            )
        return {"items": items, "total": len(items)}

    @app.get("/v1/runtimes")
    async def list_runtimes(
        offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        records, total = await service.registry.list_runtimes(offset=offset, limit=limit)
        return {"items": [_runtime_json(r) for r in records], "total": total, "offset": offset, "limit": limit}

    @app.post("/v1/pods/{pod_id}:drain", dependencies=mutate)
    async def drain(pod_id: str) -> dict[str, Any]:
        return await service.drain_pod(pod_id)

    # -- local-mode resources (what `meshserve apply -f` writes; the controller watches it)
    store = ResourceStore(service.registry)

    @app.post("/v1/resources", dependencies=mutate)
    async def apply_resources(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as err:
            raise InvalidArgument("the body must be a JSON object or a JSON list of objects") from err
        docs = body if isinstance(body, list) else [body]
        for doc in docs:
            identify(doc)  # all or nothing: validate every document first
        return {"items": [_applied_json(await store.apply(doc)) for doc in docs]}

    @app.get("/v1/resources")
    async def list_resources(kind: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        items, version = await store.list(kind=kind, namespace=namespace)
        return {"items": items, "resourceVersion": version}

    @app.get("/v1/resources:watch")
    async def watch_resources(
        resourceVersion: Annotated[int, Query(ge=0)] = 0,
        timeoutSeconds: Annotated[float, Query(ge=0, le=300)] = 30,
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeoutSeconds
        while True:
            changes = await store.changes_since(resourceVersion)
            if changes or asyncio.get_running_loop().time() >= deadline:
                last = changes[-1][2] if changes else resourceVersion
                return {
                    "events": [{"type": t, "object": o} for t, o, _ in changes],
                    "resourceVersion": str(last),
                }
            await asyncio.sleep(0.2)

    @app.get("/v1/resources/{kind}/{namespace}/{name}")
    async def get_resource(kind: str, namespace: str, name: str) -> dict[str, Any]:
        return await store.get(kind, "" if namespace == "_" else namespace, name)

    @app.delete("/v1/resources/{kind}/{namespace}/{name}", dependencies=mutate)
    async def delete_resource(kind: str, namespace: str, name: str) -> dict[str, Any]:
        await store.delete(kind, "" if namespace == "_" else namespace, name)
        return {"deleted": True}

    @app.patch("/v1/resources/{kind}/{namespace}/{name}/status", dependencies=mutate)
    async def patch_status(kind: str, namespace: str, name: str, request: Request) -> dict[str, Any]:
        try:
            patch = await request.json()
        except ValueError as err:
            raise InvalidArgument("the body must be a JSON merge patch of status") from err
        if not isinstance(patch, dict):
            raise InvalidArgument("the body must be a JSON object (a merge patch of status)")
        return await store.patch_status(kind, "" if namespace == "_" else namespace, name, patch)

    @app.get("/v1/events")
    async def events(
        model: str | None = None,
        pod: str | None = None,
        since: dt.datetime | None = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        rows = await service.registry.list_events(model_id=model, pod_id=pod, since=since, offset=offset, limit=limit)
        return {"items": [_event_json(e) for e in rows], "offset": offset, "limit": limit}

    return app


def _applied_json(a: Applied) -> dict[str, Any]:
    return {
        "kind": a.kind,
        "namespace": a.namespace,
        "name": a.name,
        "resourceVersion": a.resource_version,
        "action": a.action,
    }


def _ms_iso(ms: int) -> str | None:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat() if ms else None


def _runtime_json(r: RuntimeRecord) -> dict[str, Any]:
    return {
        "name": r.name,
        "supportedModelFormats": r.spec.get("supportedModelFormats", []),
        "protocolVersions": r.spec.get("protocolVersions", []),
        "labels": list(r.labels),
        "defaultModelSizeBytes": r.default_model_size,
        "podCapacityBytes": r.pod_capacity_bytes,
        "maxLoadingConcurrency": r.max_loading_concurrency,
        "pods": r.pods,
        "createdAt": r.created_at.isoformat() if r.created_at else None,
        "updatedAt": r.updated_at.isoformat() if r.updated_at else None,
    }


def _event_json(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "time": e.time.isoformat(),
        "kind": e.kind,
        "model": e.model_id,
        "pod": e.pod_id,
        "message": e.message,
        "details": e.details,
    }


def _model_json(record: Any, state: ModelState, *, hits: float, last_used_ms: int, rate: float = 0.0) -> dict[str, Any]:
    failure = state.failure
    return {
        "id": record.id,
        "format": record.model_type,
        "formatVersion": record.model_type_version or None,
        "runtime": record.runtime or None,
        "storageUri": record.storage_uri or None,
        "storageKey": record.storage_key or None,
        "storagePath": record.storage_path or None,
        "state": CR_STATE.get(state.status, state.status),
        "status": state.status,
        "copies": [{"pod": c.pod_id, "state": c.state, "since": _ms_iso(c.since_ms)} for c in state.copies],
        "sizes": {
            "declared": record.declared_size or None,
            "predicted": record.predicted_size or None,
            "measured": record.measured_size or None,
        },
        "minCopies": record.min_copies,
        "maxCopies": record.max_copies,
        "requests": round(hits, 1),
        "requestsPerMinute": rate,
        "lastUsed": _ms_iso(last_used_ms),
        "lastFailure": None
        if failure is None
        else {
            "reason": failure.get("reason"),
            "message": failure.get("message"),
            "pod": failure.get("pod_id"),
            "time": (t.isoformat() if (t := failure_time(failure)) else None),
        },
        "createdAt": record.created_at.isoformat() if record.created_at else None,
    }
