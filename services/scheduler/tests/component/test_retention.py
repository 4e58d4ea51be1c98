"""Retention of the event log and of deleted local resources' tombstones (real Postgres).

Old rows are made by writing their time into them (an event's `time`, a tombstone's
`updated_at`), and the retention is applied as of a given `now`: nothing waits for a clock.
A watch resuming from before the newest tombstone deleted is refused with 410, so a watcher
lists again instead of missing a deletion.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from meshserve.scheduler.api import create_app
from meshserve.scheduler.local.resources import ResourceRow, ResourceVersionExpired
from meshserve.scheduler.service import SchedulerService
from meshserve.scheduler.store.migrate import upgrade
from meshserve.scheduler.store.registry import EventRow

ServiceFactory = Callable[..., AbstractAsyncContextManager[SchedulerService]]
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
async def retained(make_service: ServiceFactory, database_url: str) -> AsyncIterator[SchedulerService]:
    upgrade(database_url)
    async with make_service(
        database_url, event_retention_days=7, event_retention_max_rows=0, resource_tombstone_retention_hours=24
    ) as service:
        yield service


async def _add_events(service: SchedulerService, model_id: str, times: list[dt.datetime]) -> None:
    async with service.registry._session() as s:
        for i, at in enumerate(times):
            s.add(EventRow(time=at, kind="placed", model_id=model_id, pod_id="p", message=f"#{i}", details={}))


async def _messages(service: SchedulerService, model_id: str) -> list[str]:
    return sorted(e.message for e in await service.registry.list_events(model_id=model_id, limit=1000))


async def test_events_older_than_the_retention_are_deleted_in_bounded_batches(retained: SchedulerService, prefix: str) -> None:
    model = f"{prefix}-m"
    old, recent = NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1)
    await _add_events(retained, model, [old, old, old, recent, recent])
    # one bounded statement takes at most its batch
    assert await retained.registry.prune_events(before=NOW - dt.timedelta(days=7), keep=0, batch=2, batches=1) == 2
    assert len(await _messages(retained, model)) == 3
    counts = await retained.apply_retention(now=NOW)
    assert counts["events"] >= 1
    assert await _messages(retained, model) == ["#3", "#4"]


async def test_only_the_newest_events_are_kept_beyond_the_row_limit(make_service: ServiceFactory, database_url: str, prefix: str) -> None:
    upgrade(database_url)
    async with make_service(database_url, event_retention_days=0, event_retention_max_rows=3) as service:
        model = f"{prefix}-m"
        await _add_events(service, model, [NOW] * 5)   # the newest events of the table (ids grow)
        await service.apply_retention(now=NOW)
        assert await _messages(service, model) == ["#2", "#3", "#4"]
        async with service.registry._session() as s:
            assert (await s.execute(select(func.count()).select_from(EventRow))).scalar_one() == 3


def _cm(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}}


async def test_old_tombstones_are_deleted_and_a_watch_from_before_them_is_told_to_list_again(
    retained: SchedulerService, prefix: str
) -> None:
    store = retained.resources
    gone_long, gone_now, kept = f"{prefix}-gone-long", f"{prefix}-gone-now", f"{prefix}-kept"
    for name in (gone_long, gone_now, kept):
        await store.apply(_cm(name))
    _, before_deletes = await store.list()
    await store.delete("ConfigMap", "default", gone_long)
    await store.delete("ConfigMap", "default", gone_now)
    async with retained.registry._session() as s:
        await s.execute(
            update(ResourceRow).where(ResourceRow.name == gone_long).values(updated_at=NOW - dt.timedelta(hours=30))
        )
    assert (await retained.apply_retention(now=NOW))["tombstones"] == 1
    async with retained.registry._session() as s:
        names = set((await s.execute(select(ResourceRow.name).where(ResourceRow.name.startswith(prefix)))).scalars())
    assert names == {gone_now, kept}   # the recent tombstone and the live object stay

    # a watcher that last saw a version before the forgotten deletion must list again
    with pytest.raises(ResourceVersionExpired):
        await store.changes_since(int(before_deletes))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(retained)), base_url="http://a") as client:
        answer = await client.get(f"/v1/resources:watch?resourceVersion={before_deletes}&timeoutSeconds=0")
        assert answer.status_code == 410 and "list again" in answer.json()["error"]
        listed = (await client.get("/v1/resources")).json()
        assert kept in {i["metadata"]["name"] for i in listed["items"]}
        fresh = await client.get(f"/v1/resources:watch?resourceVersion={listed['resourceVersion']}&timeoutSeconds=0")
        assert fresh.status_code == 200
        assert (await client.get("/v1/resources:watch?resourceVersion=0&timeoutSeconds=0")).status_code == 200
