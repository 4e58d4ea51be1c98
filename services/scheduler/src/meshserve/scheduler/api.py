"""Admin REST API of the scheduler (FastAPI, OpenAPI at /docs).

Inspect and steer placement: models, vmodels, pods, runtimes, events. Mutations need
`Authorization: Bearer <token>` when `MESHSERVE_SCHEDULER_ADMIN_TOKEN` is set. Errors
come back as `{"error": "..."}` with the matching HTTP status; bad input is a 4xx
(FastAPI's 422 names the missing or invalid field), never a 500 or a 503.

The OpenAPI document is a contract that tests/fuzz/test_admin_api_fuzz.py checks with
schemathesis against a running scheduler: every status an operation can answer is
declared (`responses=`), every input the handlers would refuse is refused by the schema
first where JSON Schema can say it (model-id pattern, no NUL characters, bounded
offsets, RFC 3339 `since`), and a 405 carries an `Allow` header listing the methods of
the path. Rules JSON Schema cannot state (storage URI xor path, minCopies <= maxCopies,
resource documents) answer 400 with a message.

`create_app` installs the error handlers and then one small function per group of
routes (health, models, vmodels, pods and runtimes, events); the local-mode resource
routes are `local/api.py`, the placement page `ui/`. Shared schema pieces are `rest.py`.

May import: the use cases (`service` and the objects it exposes), `status`, `local`,
`rest`, `ui`, the store wing (for error mapping and record types), FastAPI. Nothing
below imports this module.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)
from pydantic.alias_generators import to_camel
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from meshserve.common.errors import MeshError, NotFound, Unauthenticated
from meshserve.common.grpcutil import register_error_translator
from meshserve.common.health import Health
from meshserve.common.httputil import install_error_handlers
from meshserve.scheduler.local.api import resource_routes
from meshserve.scheduler.local.resources import ResourceStore
from meshserve.scheduler.pressure import read_pressure
from meshserve.scheduler.rest import (
    MODEL_ID_PATTERN,
    NO_NUL_PATTERN,
    Limit,
    ModelIdPath,
    NamePath,
    Offset,
    Text,
)
from meshserve.scheduler.rest import answers as _answers
from meshserve.scheduler.service import ModelSpec, SchedulerService
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.status import (
    LOADED,
    LOADING,
    LOADING_FAILED,
    NOT_LOADED,
    ModelState,
    failure_time,
)
from meshserve.scheduler.store.live import redis_unavailable
from meshserve.scheduler.store.registry import RuntimeRecord
from meshserve.scheduler.ui import install as install_ui

# A Redis failure is 503 / UNAVAILABLE with its message (`store.live.redis_unavailable`), on
# this API and on the gRPC server beside it (`ExceptionToStatusInterceptor`): registered when
# this module loads, so every app `create_app` builds maps it, in the scheduler and in tests.
register_error_translator(redis_unavailable)

# ModelMesh Serving's CR words for the model states
CR_STATE = {NOT_LOADED: "Standby", LOADING: "Loading", LOADED: "Loaded", LOADING_FAILED: "FailedToLoad"}

class _IdConvertor(StringConvertor):
    """A path segment without ':' (no model id has one), so `GET /v1/models/x:load` is
    not routed to `GET /v1/models/{model_id}` as id 'x:load' but answered 405."""

    regex = "[^/:]+"


register_url_convertor("meshid", _IdConvertor())

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339_text(value: Any) -> Any:
    # pydantic alone would also take a number as Unix time (`since=0.5`) or a zone-less time
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with a zone, e.g. 2024-05-01T12:00:00Z")
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    try:
        return value.astimezone(dt.UTC)
    except OverflowError as err:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError("date-time is out of range") from err


Since = Annotated[
    dt.datetime | None,
    BeforeValidator(_rfc3339_text),
    AfterValidator(_utc),
    Query(description="only events at or after this RFC 3339 date-time (with a zone)"),
]


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ModelCreate(Camel):
    """A model to register. `name` becomes the model id clients call."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=MODEL_ID_PATTERN,
        description="model id, e.g. example-sklearn-isvc: letters, digits, '-', '_', '.'; not starting with '.'",
    )
    format: Text = Field(min_length=1, description="model format: sklearn, xgboost, lightgbm, ...")
    storage_uri: Text | None = Field(
        default=None,
        description="s3://bucket/key, gs://, pvc://name/path, https://..., file://; give it or storagePath",
    )
    storage_key: Text | None = Field(default=None, description="key in the storage-config secret")
    storage_path: Text | None = Field(default=None, description="path in the storage; give it or storageUri")
    storage_params: dict[str, Text] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": NO_NUL_PATTERN}}
    )
    runtime: Text | None = Field(default=None, description="runtime name; empty: auto-select by format")
    format_version: Text | None = None
    protocol_version: Text | None = None
    size_bytes: int = Field(default=0, ge=0, description="declared memory size, if known")
    min_copies: int = Field(default=0, ge=0, le=100)
    max_copies: int = Field(default=0, ge=0, le=100, description="0: no upper bound; else at least minCopies")
    load_now: bool = False

    @field_validator("storage_params")
    @classmethod
    def _params(cls, v: dict[str, str]) -> dict[str, str]:
        if any("\x00" in key for key in v):
            raise ValueError("storage parameter names may not contain NUL")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from meshserve.common.storage import check_model_id

        try:
            return check_model_id(v)
        except MeshError as err:
            raise ValueError(err.message) from err


class VModelSet(Camel):
    target_model_id: str = Field(min_length=1, max_length=253, pattern=MODEL_ID_PATTERN)
    owner: Text = ""
    auto_delete: bool = False
    force: bool = False


PressureWindow = Annotated[float, Query(
    alias="windowSeconds", gt=0, le=3600, description="how far back evictions count, in seconds (at most an hour)",
)]


class PodPressureView(Camel):
    id: str
    capacity_bytes: int
    allocated_bytes: int
    draining: bool
    loaded_copies: int
    lru_copy_age_seconds: float | None = Field(description="how long its least recently used loaded copy has gone unused")


class RuntimePressure(Camel):
    """Model pressure of one runtime's pods (`GET /v1/runtimes/{name}/pressure`)."""

    runtime: str
    window_seconds: float
    measured_at: dt.datetime
    pods: list[PodPressureView] = Field(description="the runtime's pods, draining ones included")
    capacity_bytes: int = Field(description="model memory of the pods that are not draining")
    allocated_bytes: int = Field(description="held by copies on the pods that are not draining")
    evictions: int = Field(description="copies evicted for room in the window (drains not counted)")
    evicted_bytes: int = Field(description="their size (registry: measured, else predicted, else declared)")
    evicted_bytes_per_minute: float
    lru_copy_age_seconds: float | None = Field(
        description="how long the least recently used loaded copy (pods not draining) has gone unused; null: none loaded"
    )


def create_app(service: SchedulerService, *, health: Health | None = None) -> FastAPI:
    """The admin app: its error handlers, the probes (`health`, else `scheduler_health`'s),
    then one group of routes per resource."""
    require_token, secret_values, require_read = _auth(service.settings)
    app = FastAPI(
        title="meshserve scheduler admin API",
        version="0.1.0",
        description="Inspect and steer model placement. Mutations need a bearer token when one is configured.",
        dependencies=[Depends(require_read)],
    )
    _error_handlers(app)
    mutate = [Depends(require_token)]
    # /healthz, /readyz: plain routes, outside the OpenAPI document and the read-token check
    app.router.routes.extend((health or scheduler_health(service)).starlette_routes())
    _model_routes(app, service, mutate)
    _vmodel_routes(app, service, mutate)
    _pod_routes(app, service, mutate)
    resource_routes(app, ResourceStore(service.registry), mutate=mutate, secret_values=secret_values)
    _event_routes(app, service)
    install_ui(app)
    return app


def _error_handlers(app: FastAPI) -> None:
    """The common mapping (`common.httputil`: a `MeshError` or a translated Redis error is its
    code and `{"error": message}`, anything else a logged 500 with a fixed message), plus the
    admin API's own answer to Starlette's 404/405 (JSON, and a 405's `Allow` names every
    method of the path)."""
    install_error_handlers(app)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
        headers = dict(err.headers or {})
        if err.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        if err.status_code in (204, 304):
            return Response(status_code=err.status_code, headers=headers)
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=headers)


def _auth(settings: SchedulerSettings) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """The admin token check for mutations, the `secretValues` dependency, and the read token
    check every route runs (it reads the header itself, so the OpenAPI document is unchanged)."""

    def bearer_is(authorization: str | None, token: SecretStr | None) -> bool:
        """`authorization` is `Bearer <token>` (compared in constant time)."""
        return token is not None and authorization is not None and hmac.compare_digest(
            authorization.encode(), f"Bearer {token.get_secret_value()}".encode())

    def check_token(authorization: str | None, what: str) -> None:
        if settings.admin_token is not None and not bearer_is(authorization, settings.admin_token):
            raise Unauthenticated(f"this admin API needs 'Authorization: Bearer <token>' for {what}")

    async def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        check_token(authorization, "changes")


    async def secret_values(
        secretValues: Annotated[bool, Query(description=(
            "show the values of a Secret carried in local mode (needs the admin token when one is set); "
            "else they read '<hidden>'"))] = False,
        authorization: Annotated[str | None, Header()] = None,
    ) -> bool:
        if secretValues:
            check_token(authorization, "secretValues=true")
        return secretValues

    async def require_read(request: Request) -> None:
        if settings.admin_read_token is None or request.method not in ("GET", "HEAD"):
            return  # mutations are checked by require_token
        if not request.url.path.startswith("/v1/"):
            return  # /healthz, /readyz, /docs, /openapi.json, the placement page's files
        authorization = request.headers.get("authorization")
        if not (bearer_is(authorization, settings.admin_read_token) or bearer_is(authorization, settings.admin_token)):
            raise Unauthenticated("this admin API needs 'Authorization: Bearer <token>' for reads")

    return require_token, secret_values, require_read


def scheduler_health(service: SchedulerService) -> Health:
    """The scheduler's probes (`common.health`): ready while Redis and Postgres answer, each
    problem named with its store's message (`"redis: live state (Redis) is unavailable: ..."`)."""
    health = Health()

    async def redis() -> bool:
        await service.live.ping()
        return True

    async def postgres() -> bool:
        await service.registry.ping()
        return True

    health.add_check("redis", redis)
    health.add_check("postgres", postgres)
    return health


def _model_routes(app: FastAPI, service: SchedulerService, mutate: list[DependsParam]) -> None:
    async def model_view(model_id: str, *, events: bool) -> dict[str, Any]:
        record = await service.registry.get_model(model_id)
        state = await service.model_state(model_id, record)
        hits, last_used_ms = await service.live.usage(model_id)
        rate = (await service.live.rates_per_minute([model_id])).get(model_id, 0.0)
        view = _model_json(record, state, hits=hits, last_used_ms=last_used_ms, rate=rate)
        if events:
            view["events"] = [_event_json(e) for e in await service.registry.list_events(model_id=model_id, limit=10)]
        return view

    @app.post("/v1/models", status_code=201, dependencies=mutate, responses=_answers(401, 409))
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

    @app.get("/v1/models", responses=_answers())
    async def list_models(offset: Offset = 0, limit: Limit = 100) -> dict[str, Any]:
        records, total = await service.registry.list_models(offset=offset, limit=limit)
        ids = [r.id for r in records]
        rates = await service.live.rates_per_minute(ids)  # one read each for the page
        usage = await service.live.usage_many(ids)
        items = []
        for record in records:
            state = await service.model_state(record.id, record)
            hits, last_used_ms = usage.get(record.id, (0.0, 0))
            items.append(_model_json(record, state, hits=hits, last_used_ms=last_used_ms, rate=rates.get(record.id, 0.0)))
        return {"items": items, "total": total, "offset": offset, "limit": limit}

    @app.get("/v1/models/{model_id:meshid}", responses=_answers(404))
    async def get_model(model_id: ModelIdPath) -> dict[str, Any]:
        return await model_view(model_id, events=True)

    @app.delete(
        "/v1/models/{model_id:meshid}",
        status_code=204,
        dependencies=mutate,
        response_class=Response,
        response_model=None,
        responses=_answers(401, 404),
    )
    async def delete_model(model_id: ModelIdPath) -> None:
        await service.unregister_model(model_id)

    @app.post("/v1/models/{model_id}:load", dependencies=mutate, responses=_answers(401, 404, 412, 504, 507))
    async def load(model_id: ModelIdPath) -> dict[str, Any]:
        await service.copies.retry_load(model_id)
        return await model_view(model_id, events=False)

    @app.post("/v1/models/{model_id}:unload", dependencies=mutate, responses=_answers(401, 404, 412, 504))
    async def unload(model_id: ModelIdPath) -> dict[str, Any]:
        await service.registry.get_model(model_id)
        n = await service.copies.unload(model_id)
        return {"unloaded": n, **await model_view(model_id, events=False)}


def _vmodel_routes(app: FastAPI, service: SchedulerService, mutate: list[DependsParam]) -> None:
    @app.get("/v1/vmodels", responses=_answers())
    async def list_vmodels(offset: Offset = 0, limit: Limit = 100) -> dict[str, Any]:
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

    @app.put("/v1/vmodels/{vmodel_id:meshid}", dependencies=mutate, responses=_answers(401, 404, 409, 412))
    async def set_vmodel(vmodel_id: ModelIdPath, body: VModelSet) -> dict[str, Any]:
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

    @app.get("/v1/vmodels/{vmodel_id:meshid}", responses=_answers(404))
    async def get_vmodel(vmodel_id: ModelIdPath) -> dict[str, Any]:
        return await vmodel_view(vmodel_id)

    @app.delete(
        "/v1/vmodels/{vmodel_id:meshid}",
        status_code=204,
        dependencies=mutate,
        response_class=Response,
        response_model=None,
        responses=_answers(401, 404, 409, 412),
    )
    async def delete_vmodel(vmodel_id: ModelIdPath) -> None:
        if await service.registry.get_vmodel(vmodel_id) is None:
            raise NotFound(f"vmodel {vmodel_id!r} not found")
        await service.vmodels.delete_vmodel(vmodel_id)


def _pod_routes(app: FastAPI, service: SchedulerService, mutate: list[DependsParam]) -> None:
    @app.get("/v1/pods", responses=_answers())
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

    @app.get("/v1/runtimes", responses=_answers())
    async def list_runtimes(offset: Offset = 0, limit: Limit = 100) -> dict[str, Any]:
        records, total = await service.registry.list_runtimes(offset=offset, limit=limit)
        return {"items": [_runtime_json(r) for r in records], "total": total, "offset": offset, "limit": limit}

    @app.get("/v1/runtimes/{name}/pressure", response_model=RuntimePressure, responses=_answers(401))
    async def runtime_pressure(name: NamePath, window_seconds: PressureWindow = 60) -> RuntimePressure:
        """Model pressure of a runtime's pods (read-only; see `pressure.py`): capacity
        evictions of the last `windowSeconds` and the age of the least recently used copy.
        A runtime without pods (or unknown) answers zeros and no pods."""
        p = await read_pressure(live=service.live, registry=service.registry, runtime=name, window_seconds=window_seconds)
        return RuntimePressure(
            runtime=p.runtime, window_seconds=p.window_seconds, measured_at=dt.datetime.now(dt.UTC),
            pods=[PodPressureView(
                id=r.pod_id, capacity_bytes=r.capacity_bytes, allocated_bytes=r.allocated_bytes, draining=r.draining,
                loaded_copies=r.loaded_copies, lru_copy_age_seconds=r.lru_copy_age_seconds,
            ) for r in p.pods],
            capacity_bytes=p.capacity_bytes, allocated_bytes=p.allocated_bytes, evictions=p.evictions,
            evicted_bytes=p.evicted_bytes, evicted_bytes_per_minute=p.evicted_bytes_per_minute,
            lru_copy_age_seconds=p.lru_copy_age_seconds,
        )

    @app.post("/v1/pods/{pod_id}:drain", dependencies=mutate, responses=_answers(401, 404, 412, 504))
    async def drain(pod_id: NamePath) -> dict[str, Any]:
        return await service.scaler.drain_pod(pod_id)


def _event_routes(app: FastAPI, service: SchedulerService) -> None:
    @app.get("/v1/events", responses=_answers())
    async def events(
        model: Annotated[str | None, Query(pattern=NO_NUL_PATTERN)] = None,
        pod: Annotated[str | None, Query(pattern=NO_NUL_PATTERN)] = None,
        since: Since = None,
        offset: Offset = 0,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        rows = await service.registry.list_events(model_id=model, pod_id=pod, since=since, offset=offset, limit=limit)
        return {"items": [_event_json(e) for e in rows], "offset": offset, "limit": limit}


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method of the routes whose path matches the request's (Starlette's own 405
    names only the first such route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] is not Match.NONE:
            methods.update(route.methods)  # type: ignore[attr-defined]
    return sorted(methods)


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
