"""Alembic environment: runs the scheduler's migrations against MESHSERVE_DATABASE_URL.

May import: `store.registry` and `local.resources` (their tables), alembic, sqlalchemy.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

import meshserve.scheduler.local.resources  # noqa: F401 - registers its table on Base.metadata
from meshserve.scheduler.store.registry import Base, to_sync_url

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "sqlalchemy.url must be set by meshserve.scheduler.store.migrate"
engine = create_engine(to_sync_url(url), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
