"""Create the database if needed and run the Alembic migrations to head.

May import: `store.registry`, alembic, sqlalchemy. Alembic's script_location is the
`migrations` folder beside this module.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from meshserve.scheduler.store.registry import to_sync_url

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", to_sync_url(database_url).replace("%", "%%"))
    return cfg


def ensure_database(database_url: str) -> None:
    """CREATE DATABASE when it does not exist (connecting to the `postgres` database)."""
    url = make_url(to_sync_url(database_url))
    name = url.database
    if not name or name == "postgres":
        return
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
                log.info("created database %s", name)
    finally:
        admin.dispose()


def upgrade(database_url: str) -> None:
    ensure_database(database_url)
    command.upgrade(alembic_config(database_url), "head")
