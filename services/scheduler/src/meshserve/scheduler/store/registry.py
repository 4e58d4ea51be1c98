"""Durable registry in Postgres (SQLAlchemy 2, async, psycopg 3): runtimes, models,
vmodels and the event log of every placement decision.

Schema changes go through Alembic (`python -m meshserve.scheduler migrate`); the
tables here must match the latest migration (a test compares them). Driver errors
are translated into `Unavailable` so callers answer 503 / UNAVAILABLE, never 500,
except a value Postgres cannot take (a NUL in text, a number out of range): that is
the caller's mistake, `InvalidArgument` (400 / INVALID_ARGUMENT).

May import: `meshserve.common`, `models`, sqlalchemy. Never imports the use cases or
the transports.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Integer,
    String,
    Text,
    delete,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from meshserve.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from meshserve.scheduler.models import EventRecord, ModelRecord, RuntimeRecord, VModelRecord


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON().with_variant(JSON(), "postgresql")}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RuntimeRow(Base):
    """A runtime as its live pods describe it (written by the scheduler's leader; see
    `SchedulerService.sync_runtimes`). `pods` is the live pod count as of `updated_at`."""

    __tablename__ = "runtimes"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    # what the pods' labels say of the ServingRuntime spec: supportedModelFormats
    # (the auto-selected ones, "name" or "name:version") and protocolVersions
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    default_model_size: Mapped[int] = mapped_column(BigInteger, default=0)
    pod_capacity_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    max_loading_concurrency: Mapped[int] = mapped_column(Integer, default=0)
    pods: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class ModelRow(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(253), primary_key=True)
    model_type: Mapped[str] = mapped_column(String(64))
    model_type_version: Mapped[str] = mapped_column(String(64), default="")
    runtime: Mapped[str] = mapped_column(String(253), default="")
    protocol_version: Mapped[str] = mapped_column(String(32), default="")
    storage_uri: Mapped[str] = mapped_column(Text, default="")
    storage_key: Mapped[str] = mapped_column(String(253), default="")
    storage_path: Mapped[str] = mapped_column(Text, default="")
    storage_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    declared_size: Mapped[int] = mapped_column(BigInteger, default=0)
    predicted_size: Mapped[int] = mapped_column(BigInteger, default=0)
    measured_size: Mapped[int] = mapped_column(BigInteger, default=0)
    min_copies: Mapped[int] = mapped_column(Integer, default=0)
    max_copies: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class VModelRow(Base):
    __tablename__ = "vmodels"
    id: Mapped[str] = mapped_column(String(253), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), default="")
    active_model_id: Mapped[str] = mapped_column(String(253), default="")
    target_model_id: Mapped[str] = mapped_column(String(253), default="")
    auto_delete: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(253), default="", index=True)
    pod_id: Mapped[str] = mapped_column(String(253), default="", index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class RetirementRow(Base):
    """A model a vmodel replaced, to unregister once `due_at` has passed (`vmodels.VModels`);
    the row is what survives a scheduler killed during the grace."""

    __tablename__ = "model_retirements"
    model_id: Mapped[str] = mapped_column(String(253), primary_key=True)
    due_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


def model_record(row: ModelRow) -> ModelRecord:
    return ModelRecord(
        id=row.id,
        model_type=row.model_type,
        model_type_version=row.model_type_version,
        runtime=row.runtime,
        protocol_version=row.protocol_version,
        storage_uri=row.storage_uri,
        storage_key=row.storage_key,
        storage_path=row.storage_path,
        storage_params=dict(row.storage_params or {}),
        declared_size=row.declared_size,
        predicted_size=row.predicted_size,
        measured_size=row.measured_size,
        min_copies=row.min_copies,
        max_copies=row.max_copies,
        last_failure=row.last_failure,
        created_at=row.created_at,
    )


def runtime_record(row: RuntimeRow) -> RuntimeRecord:
    return RuntimeRecord(
        name=row.name,
        spec=dict(row.spec or {}),
        labels=tuple(row.labels or ()),
        default_model_size=row.default_model_size,
        pod_capacity_bytes=row.pod_capacity_bytes,
        max_loading_concurrency=row.max_loading_concurrency,
        pods=row.pods,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


MODEL_FIELDS = {c.name for c in ModelRow.__table__.columns} - {"created_at", "updated_at"}


class Registry:
    """Async access to the durable registry; every method is one transaction."""

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(
            to_async_url(url), pool_pre_ping=True, pool_size=5, max_overflow=5
        )
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._sessions() as session, session.begin():
                yield session
        except IntegrityError:
            raise
        except DataError as err:
            # the message names no value: it could be part of a secret's storage parameters
            raise InvalidArgument(
                "a value in the request cannot be stored (a NUL character, or a number out of range)"
            ) from err
        except (OperationalError, DBAPIError, OSError) as err:
            raise Unavailable(f"the model registry (Postgres) is unavailable: {type(err).__name__}") from err

    async def ping(self) -> None:
        async with self._session() as s:
            await s.execute(select(1))

    # -- models ---------------------------------------------------------------------
    async def create_model(self, fields: dict[str, Any], *, replace: bool = False) -> ModelRecord:
        unknown = set(fields) - MODEL_FIELDS
        if unknown:
            raise ValueError(f"unknown model fields {sorted(unknown)}")
        try:
            async with self._session() as s:
                row = await s.get(ModelRow, fields["id"])
                if row is not None:
                    if not replace and _spec_differs(row, fields):
                        raise AlreadyExists(
                            f"model {fields['id']!r} is already registered with a different spec; "
                            "a changed spec needs a new model id"
                        )
                    for key, value in fields.items():
                        setattr(row, key, value)
                else:
                    row = ModelRow(**fields)
                    s.add(row)
                await s.flush()
                return model_record(row)
        except IntegrityError as err:
            raise AlreadyExists(f"model {fields['id']!r} already exists") from err

    async def get_model(self, model_id: str) -> ModelRecord:
        async with self._session() as s:
            row = await s.get(ModelRow, model_id)
            if row is None:
                raise NotFound(f"model {model_id!r} not found")
            return model_record(row)

    async def find_model(self, model_id: str) -> ModelRecord | None:
        async with self._session() as s:
            row = await s.get(ModelRow, model_id)
            return None if row is None else model_record(row)

    async def list_models(self, *, offset: int = 0, limit: int = 100) -> tuple[list[ModelRecord], int]:
        async with self._session() as s:
            total = (await s.execute(select(func.count()).select_from(ModelRow))).scalar_one()
            rows = (await s.execute(select(ModelRow).order_by(ModelRow.id).offset(offset).limit(limit))).scalars()
            return [model_record(r) for r in rows], int(total)

    async def all_model_ids(self) -> list[str]:
        async with self._session() as s:
            return list((await s.execute(select(ModelRow.id))).scalars())

    async def all_bounds(self) -> dict[str, tuple[int, int]]:
        """min/max copies of the models that set either."""
        query = select(ModelRow.id, ModelRow.min_copies, ModelRow.max_copies).where(
            (ModelRow.min_copies > 0) | (ModelRow.max_copies > 0)
        )
        async with self._session() as s:
            return {r.id: (r.min_copies, r.max_copies) for r in (await s.execute(query))}

    async def update_model(self, model_id: str, **values: Any) -> None:
        async with self._session() as s:
            row = await s.get(ModelRow, model_id)
            if row is None:
                return
            for key, value in values.items():
                setattr(row, key, value)

    async def delete_model(self, model_id: str) -> bool:
        async with self._session() as s:
            result = await s.execute(delete(ModelRow).where(ModelRow.id == model_id))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- runtimes -------------------------------------------------------------------------
    async def upsert_runtime(self, runtime: RuntimeRecord) -> None:
        """Insert or replace a runtime's row (one statement: safe when two replicas race)."""
        values = {
            "spec": runtime.spec,
            "labels": list(runtime.labels),
            "default_model_size": runtime.default_model_size,
            "pod_capacity_bytes": runtime.pod_capacity_bytes,
            "max_loading_concurrency": runtime.max_loading_concurrency,
            "pods": runtime.pods,
            "updated_at": _now(),
        }
        statement = pg_insert(RuntimeRow).values(name=runtime.name, **values)
        async with self._session() as s:
            await s.execute(statement.on_conflict_do_update(index_elements=[RuntimeRow.name], set_=values))

    async def list_runtimes(self, *, offset: int = 0, limit: int = 100) -> tuple[list[RuntimeRecord], int]:
        async with self._session() as s:
            total = (await s.execute(select(func.count()).select_from(RuntimeRow))).scalar_one()
            query = select(RuntimeRow).order_by(RuntimeRow.name).offset(offset).limit(limit)
            return [runtime_record(r) for r in (await s.execute(query)).scalars()], int(total)

    # -- vmodels ----------------------------------------------------------------------
    async def upsert_vmodel(
        self, *, vmodel_id: str, owner: str, active: str, target: str, auto_delete: bool,
        guard: Callable[[VModelRecord | None], None] | None = None,
    ) -> VModelRecord:
        """Write the vmodel's row. `guard(current)` (raising to refuse) sees the row as it is
        inside the same transaction, locked (`SELECT ... FOR UPDATE`), so a precondition and
        the write it allows are one step: two writers cannot both pass a check the first
        write makes false (a new row: the second insert fails on the primary key)."""
        try:
            async with self._session() as s:
                row = await s.get(VModelRow, vmodel_id, with_for_update=guard is not None)
                if guard is not None:
                    guard(None if row is None else VModelRecord(row.id, row.owner, row.active_model_id, row.target_model_id, row.auto_delete))
                if row is None:
                    row = VModelRow(id=vmodel_id)
                    s.add(row)
                row.owner, row.active_model_id, row.target_model_id, row.auto_delete = owner, active, target, auto_delete
                return VModelRecord(vmodel_id, owner, active, target, auto_delete)
        except IntegrityError as err:  # created by another call meanwhile
            raise FailedPrecondition(f"vmodel {vmodel_id} was created by another call at the same time; try again") from err

    async def get_vmodel(self, vmodel_id: str) -> VModelRecord | None:
        async with self._session() as s:
            row = await s.get(VModelRow, vmodel_id)
            if row is None:
                return None
            return VModelRecord(row.id, row.owner, row.active_model_id, row.target_model_id, row.auto_delete)

    async def list_vmodels(self, *, offset: int = 0, limit: int = 1000) -> tuple[list[VModelRecord], int]:
        async with self._session() as s:
            total = (await s.execute(select(func.count()).select_from(VModelRow))).scalar_one()
            rows = (await s.execute(select(VModelRow).order_by(VModelRow.id).offset(offset).limit(limit))).scalars()
            return [
                VModelRecord(r.id, r.owner, r.active_model_id, r.target_model_id, r.auto_delete) for r in rows
            ], int(total)

    async def delete_vmodel(self, vmodel_id: str) -> None:
        async with self._session() as s:
            await s.execute(delete(VModelRow).where(VModelRow.id == vmodel_id))

    # -- retirements of replaced models -----------------------------------------------
    async def schedule_retirement(self, model_id: str, *, due_at: dt.datetime) -> None:
        """Remember that `model_id` is to be unregistered at `due_at`; a retirement already
        pending for it keeps its (earlier) time."""
        statement = pg_insert(RetirementRow).values(model_id=model_id, due_at=due_at, created_at=_now())
        async with self._session() as s:
            await s.execute(statement.on_conflict_do_nothing(index_elements=[RetirementRow.model_id]))

    async def due_retirements(self, *, now: dt.datetime, limit: int = 100) -> list[str]:
        """The models whose retirement is due at `now`, the earliest first."""
        query = (
            select(RetirementRow.model_id).where(RetirementRow.due_at <= now).order_by(RetirementRow.due_at).limit(limit)
        )
        async with self._session() as s:
            return list((await s.execute(query)).scalars())

    async def pending_retirements(self) -> dict[str, dt.datetime]:
        """Every pending retirement: model id -> when it is due."""
        async with self._session() as s:
            return {r.model_id: r.due_at for r in (await s.execute(select(RetirementRow))).scalars()}

    async def delete_retirement(self, model_id: str) -> None:
        async with self._session() as s:
            await s.execute(delete(RetirementRow).where(RetirementRow.model_id == model_id))

    # -- events -----------------------------------------------------------------------
    async def add_event(
        self, *, kind: str, model_id: str = "", pod_id: str = "", message: str = "", details: dict[str, Any] | None = None
    ) -> None:
        async with self._session() as s:
            s.add(EventRow(kind=kind, model_id=model_id, pod_id=pod_id, message=message, details=details or {}))

    async def prune_events(self, *, before: dt.datetime | None, keep: int, batch: int, batches: int) -> int:
        """Delete events older than `before` (None: no age limit) and beyond the newest `keep`
        (0: no row limit), the oldest first, in at most `batches` statements of `batch` rows
        each (one transaction each, so a pass never holds a long lock); returns how many went."""
        deleted = 0
        for _ in range(batches):
            async with self._session() as s:
                oldest = select(EventRow.id).order_by(EventRow.id)
                if keep > 0:
                    newest_dropped = (
                        await s.execute(select(EventRow.id).order_by(EventRow.id.desc()).offset(keep).limit(1))
                    ).scalar_one_or_none()
                else:
                    newest_dropped = None
                if before is None and newest_dropped is None:
                    break
                if before is not None and newest_dropped is not None:
                    oldest = oldest.where((EventRow.time < before) | (EventRow.id <= newest_dropped))
                elif before is not None:
                    oldest = oldest.where(EventRow.time < before)
                else:
                    oldest = oldest.where(EventRow.id <= newest_dropped)
                result = await s.execute(delete(EventRow).where(EventRow.id.in_(oldest.limit(batch))))
                n = int(result.rowcount)  # type: ignore[attr-defined]
            deleted += n
            if n < batch:
                break
        return deleted

    async def list_events(
        self,
        *,
        model_id: str | None = None,
        pod_id: str | None = None,
        since: dt.datetime | None = None,
        kinds: Sequence[str] = (),
        offset: int = 0,
        limit: int = 100,
    ) -> list[EventRecord]:
        query = select(EventRow)
        if model_id:
            query = query.where(EventRow.model_id == model_id)
        if pod_id:
            query = query.where(EventRow.pod_id == pod_id)
        if since is not None:
            query = query.where(EventRow.time >= since)
        if kinds:
            query = query.where(EventRow.kind.in_(list(kinds)))
        query = query.order_by(EventRow.id.desc()).offset(offset).limit(limit)
        async with self._session() as s:
            return [
                EventRecord(r.id, r.time, r.kind, r.model_id, r.pod_id, r.message, dict(r.details or {}))
                for r in (await s.execute(query)).scalars()
            ]


_SPEC_FIELDS = (
    "model_type",
    "model_type_version",
    "runtime",
    "storage_uri",
    "storage_key",
    "storage_path",
    "storage_params",
)


def _spec_differs(row: ModelRow, fields: dict[str, Any]) -> bool:
    return any(key in fields and getattr(row, key) != fields[key] for key in _SPEC_FIELDS)


def to_async_url(url: str) -> str:
    """Accept postgres://, postgresql:// or postgresql+psycopg:// and use psycopg 3."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def to_sync_url(url: str) -> str:
    return to_async_url(url)
