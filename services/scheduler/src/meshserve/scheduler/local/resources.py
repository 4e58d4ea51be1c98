"""Local-mode resource store: Kubernetes-style objects kept in Postgres, with a
Kubernetes-like resourceVersion so the controller can list+watch them exactly as it
does against an API server.

Every write takes the next value of one global sequence as the object's
resourceVersion; deletes leave a tombstone row with its own version, so a watcher
resuming from version N sees every ADDED / MODIFIED / DELETED after N, in order.

Tombstones do not stay forever: the leader's retention (`prune_tombstones`) deletes those
older than a few hours and raises the compaction floor (`resource_compaction`) to the
newest version it deleted. A watch resuming from a version below the floor may have missed
a deletion, so it is refused with `ResourceVersionExpired` (410 Gone, as an API server's
"too old resource version"), and the watcher lists again; version 0 means "everything now"
and is never refused.

May import: `meshserve.common`, `store.registry`, sqlalchemy. Never imports the use
cases or the transports.
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer, String, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Mapped, mapped_column

from meshserve.common.errors import InvalidArgument, MeshError, NotFound
from meshserve.scheduler.store.registry import Base, Registry

KINDS = {
    "InferenceService": ("serving.kserve.io/v1beta1", True),
    "Predictor": ("serving.kserve.io/v1alpha1", True),
    "ServingRuntime": ("serving.kserve.io/v1alpha1", True),
    "ClusterServingRuntime": ("serving.kserve.io/v1alpha1", False),
    "ConfigMap": ("v1", True),
}


class ResourceRow(Base):
    __tablename__ = "resources"
    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(253), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    uid: Mapped[str] = mapped_column(String(36))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    resource_version: Mapped[int] = mapped_column(BigInteger, index=True)
    created_version: Mapped[int] = mapped_column(BigInteger)
    generation: Mapped[int] = mapped_column(BigInteger)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class CompactionRow(Base):
    """One row (id 1): the newest resourceVersion of the tombstones deleted so far."""

    __tablename__ = "resource_compaction"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ResourceVersionExpired(MeshError):
    """A watch from a resourceVersion older than the compaction floor: list again."""

    status = "OUT_OF_RANGE"
    http_status = 410


@dataclass(frozen=True)
class Applied:
    kind: str
    namespace: str
    name: str
    resource_version: str
    action: str


def identify(obj: Any) -> tuple[str, str, str]:
    """(kind, namespace, name) of a document; InvalidArgument when it is not usable."""
    if not isinstance(obj, dict):
        raise InvalidArgument("each resource must be a JSON/YAML object")
    kind = obj.get("kind")
    meta = obj.get("metadata")
    if not kind or not isinstance(meta, dict) or not meta.get("name"):
        raise InvalidArgument("a resource needs kind and metadata.name")
    if kind not in KINDS:
        raise InvalidArgument(f"kind {kind!r} is not supported here (supported: {', '.join(sorted(KINDS))})")
    namespaced = KINDS[kind][1]
    namespace = str(meta.get("namespace") or "default") if namespaced else ""
    return str(kind), namespace, str(meta["name"])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ResourceStore:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def _next_version(self, session: Any) -> int:
        return int((await session.execute(text("SELECT nextval('resource_version_seq')"))).scalar_one())

    async def apply(self, obj: dict[str, Any]) -> Applied:
        kind, namespace, name = identify(obj)
        async with self.registry._session() as s:
            row = await s.get(ResourceRow, (kind, namespace, name), with_for_update=True)
            incoming = copy.deepcopy(obj)
            incoming.pop("status", None)
            if namespace:
                incoming["metadata"]["namespace"] = namespace
            else:
                incoming["metadata"].pop("namespace", None)
            if row is not None and not row.deleted:
                old = copy.deepcopy(row.body)
                status = old.pop("status", None)
                if _comparable(old) == _comparable(incoming):
                    return Applied(kind, namespace, name, str(row.resource_version), "unchanged")
                spec_changed = old.get("spec") != incoming.get("spec")
                row.generation += 1 if spec_changed else 0
                action = "configured"
            else:
                status = None
                if row is None:
                    version = await self._next_version(s)
                    row = ResourceRow(
                        kind=kind,
                        namespace=namespace,
                        name=name,
                        created_at=_now(),
                        generation=0,
                        resource_version=version,
                        created_version=version,
                        body={},
                        updated_at=_now(),
                    )
                    s.add(row)
                row.uid = str(uuid.uuid4())
                row.generation = 1
                row.created_at = _now()
                action = "created"
            with s.no_autoflush:
                row.resource_version = await self._next_version(s)
            if action == "created":
                row.created_version = row.resource_version
            row.deleted = False
            row.updated_at = _now()
            meta = incoming.setdefault("metadata", {})
            meta.update(
                name=name,
                uid=row.uid,
                resourceVersion=str(row.resource_version),
                generation=row.generation,
                creationTimestamp=row.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            if namespace:
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
            if status is not None:
                incoming["status"] = status
            row.body = incoming
            return Applied(kind, namespace, name, str(row.resource_version), action)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        async with self.registry._session() as s:
            row = await s.get(ResourceRow, (kind, namespace, name))
            if row is None or row.deleted:
                raise NotFound(f"{kind} {namespace + '/' if namespace else ''}{name} not found")
            return dict(row.body)

    async def list(self, *, kind: str | None = None, namespace: str | None = None) -> tuple[list[dict[str, Any]], str]:
        query = select(ResourceRow).where(ResourceRow.deleted.is_(False))
        if kind:
            query = query.where(ResourceRow.kind == kind)
        if namespace is not None:
            query = query.where(ResourceRow.namespace == namespace)
        async with self.registry._session() as s:
            rows = (await s.execute(query.order_by(ResourceRow.kind, ResourceRow.namespace, ResourceRow.name))).scalars()
            items = [dict(r.body) for r in rows]
            current = (await s.execute(select(func.max(ResourceRow.resource_version)))).scalar_one()
            return items, str(current or 0)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        async with self.registry._session() as s:
            row = await s.get(ResourceRow, (kind, namespace, name), with_for_update=True)
            if row is None or row.deleted:
                raise NotFound(f"{kind} {namespace + '/' if namespace else ''}{name} not found")
            row.deleted = True
            row.resource_version = await self._next_version(s)
            row.updated_at = _now()
            body = copy.deepcopy(row.body)
            body.setdefault("metadata", {})["resourceVersion"] = str(row.resource_version)
            row.body = body

    async def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        async with self.registry._session() as s:
            row = await s.get(ResourceRow, (kind, namespace, name), with_for_update=True)
            if row is None or row.deleted:
                raise NotFound(f"{kind} {namespace + '/' if namespace else ''}{name} not found")
            body = copy.deepcopy(row.body)
            body["status"] = merge_patch(body.get("status") or {}, patch)
            row.resource_version = await self._next_version(s)
            row.updated_at = _now()
            body.setdefault("metadata", {})["resourceVersion"] = str(row.resource_version)
            row.body = body
            return body

    async def changes_since(self, version: int, *, limit: int = 500) -> list[tuple[str, dict[str, Any], int]]:
        """(event type, object, resourceVersion) of every write after `version`, in order;
        `ResourceVersionExpired` when deletions after `version` may have been forgotten."""
        query = (
            select(ResourceRow)
            .where(ResourceRow.resource_version > version)
            .order_by(ResourceRow.resource_version)
            .limit(limit)
        )
        async with self.registry._session() as s:
            floor = (await s.execute(select(CompactionRow.version).where(CompactionRow.id == 1))).scalar_one_or_none()
            if version and floor and version < floor:
                raise ResourceVersionExpired(
                    f"too old resource version: {version} (deleted resources before {floor} are forgotten); "
                    "list again (GET /v1/resources) and watch from its resourceVersion"
                )
            out = []
            for row in (await s.execute(query)).scalars():
                if row.deleted:
                    kind = "DELETED"
                elif row.resource_version == row.created_version:
                    kind = "ADDED"
                else:
                    kind = "MODIFIED"
                out.append((kind, dict(row.body), row.resource_version))
            return out


    async def prune_tombstones(self, *, before: dt.datetime, batch: int, batches: int) -> int:
        """Delete the tombstones of resources deleted before `before`, the oldest first, in
        at most `batches` transactions of `batch` rows, raising the compaction floor in the
        same transaction as each deletion; returns how many went."""
        deleted = 0
        for _ in range(batches):
            async with self.registry._session() as s:
                versions = list(
                    (
                        await s.execute(
                            text(
                                "DELETE FROM resources WHERE (kind, namespace, name) IN ("
                                " SELECT kind, namespace, name FROM resources"
                                " WHERE deleted AND updated_at < :before ORDER BY resource_version LIMIT :n"
                                " FOR UPDATE SKIP LOCKED) RETURNING resource_version"
                            ),
                            {"before": before, "n": batch},
                        )
                    ).scalars()
                )
                if versions:
                    newest = max(versions)
                    upsert = pg_insert(CompactionRow).values(id=1, version=newest, updated_at=_now())
                    await s.execute(
                        upsert.on_conflict_do_update(
                            index_elements=[CompactionRow.id],
                            set_={"version": func.greatest(CompactionRow.version, newest), "updated_at": _now()},
                        )
                    )
            deleted += len(versions)
            if len(versions) < batch:
                break
        return deleted


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    o = copy.deepcopy(obj)
    meta = o.get("metadata", {})
    for key in ("resourceVersion", "uid", "generation", "creationTimestamp", "managedFields"):
        meta.pop(key, None)
    return o


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
