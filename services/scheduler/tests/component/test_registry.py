"""The Postgres registry: Alembic migrations and the ORM agree; basic round trips."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import meshserve.scheduler.local.resources  # noqa: F401 - its table is part of the schema
from meshserve.common.errors import AlreadyExists, NotFound
from meshserve.scheduler.store.migrate import upgrade
from meshserve.scheduler.store.registry import Base, Registry, to_sync_url


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    upgrade(database_url)
    return database_url


def test_migrations_match_the_models(migrated: str) -> None:
    engine = create_engine(to_sync_url(migrated))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


async def test_model_round_trip_and_conflicts(migrated: str) -> None:
    registry = Registry(migrated)
    try:
        fields = {"id": "rt-model", "model_type": "sklearn", "storage_uri": "s3://b/p"}
        record = await registry.create_model(fields)
        assert (record.id, record.model_type, record.min_copies) == ("rt-model", "sklearn", 0)
        assert (await registry.create_model(fields)).id == "rt-model"  # same spec: idempotent
        with pytest.raises(AlreadyExists):
            await registry.create_model({**fields, "storage_uri": "s3://b/other"})
        await registry.update_model("rt-model", measured_size=1234)
        assert (await registry.get_model("rt-model")).measured_size == 1234
        await registry.add_event(kind="placed", model_id="rt-model", pod_id="p", message="why")
        events = await registry.list_events(model_id="rt-model")
        assert [(e.kind, e.message) for e in events] == [("placed", "why")]
        assert await registry.delete_model("rt-model")
        with pytest.raises(NotFound):
            await registry.get_model("rt-model")
    finally:
        await registry.close()
