"""Real Redis and Postgres for the scheduler's store tests: the machine's servers when
MESHSERVE_REDIS_URL / MESHSERVE_DATABASE_URL are set (with a private key prefix and
database), else private instances started from the pip packages."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup
from meshserve.scheduler.service import SchedulerService
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.store.live import LiveState
from meshserve.scheduler.store.migrate import upgrade
from meshserve.scheduler.store.registry import Registry, to_sync_url

ServiceFactory = Callable[..., contextlib.AbstractAsyncContextManager[SchedulerService]]


@pytest.fixture(scope="session")
def infra_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessGroup]:
    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("infra-logs"))
    yield group
    group.stop_all()


@pytest.fixture(scope="session")
def redis_url(infra_group: ProcessGroup, tmp_path_factory: pytest.TempPathFactory) -> str:
    return os.environ.get("MESHSERVE_REDIS_URL") or infra.start_redis(infra_group, tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="session")
def database_url(infra_group: ProcessGroup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = os.environ.get("MESHSERVE_DATABASE_URL") or infra.start_postgres(
        infra_group, Path(tmp_path_factory.mktemp("pg")) / "data"
    ).url
    url = make_url(to_sync_url(base))
    name = f"meshserve_ct_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def live(redis_url: str, prefix: str) -> AsyncIterator[LiveState]:
    """LiveState on a private key prefix, its keys removed afterwards."""
    state = LiveState(redis_url, prefix=prefix)
    yield state
    keys = [k async for k in state.redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await state.redis.delete(*keys)
    await state.close()


@pytest.fixture
def make_service(redis_url: str, prefix: str) -> ServiceFactory:
    """`async with make_service(database_url, **settings) as service:` a SchedulerService on
    the test's Redis prefix and that database; on exit its keys are deleted and it is closed."""

    @contextlib.asynccontextmanager
    async def make(database_url: str, **settings: Any) -> AsyncIterator[SchedulerService]:
        config = SchedulerSettings(redis_url=redis_url, database_url=database_url, key_prefix=prefix, **settings)
        registry, live = Registry(database_url), LiveState(redis_url, prefix=prefix)
        service = SchedulerService(settings=config, registry=registry, live=live)
        try:
            yield service
        finally:
            await service.close()
            keys = [k async for k in live.redis.scan_iter(match=f"{prefix}:*")]
            if keys:
                await live.redis.delete(*keys)
            await service.pullers.close()
            await live.close()
            await registry.close()

    return make


@pytest.fixture
async def service(make_service: ServiceFactory, database_url: str) -> AsyncIterator[SchedulerService]:
    """A SchedulerService on a migrated database (see `make_service`)."""
    upgrade(database_url)
    async with make_service(database_url) as svc:
        yield svc
