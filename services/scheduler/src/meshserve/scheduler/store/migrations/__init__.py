"""The registry's Alembic migrations (`env.py`, `versions/`), run to head by
`meshserve.scheduler.store.migrate.upgrade`: `python -m meshserve.scheduler migrate` (the
Deployment's init container) and the local stack before it starts a scheduler.

Each version may import alembic and sqlalchemy only: a migration is frozen history and never
imports the registry's current code."""
