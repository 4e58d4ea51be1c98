"""Real Redis and Postgres for the scheduler's store tests: the machine's servers when
MESHSERVE_REDIS_URL / MESHSERVE_DATABASE_URL are set (with a private key prefix and
database), else private instances started from the pip packages."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup
from meshserve.scheduler.registry import to_sync_url


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
