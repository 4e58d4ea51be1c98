"""Old import path of the migrations runner, kept for callers outside the scheduler.

`libs/cli/devstack.py` imports `upgrade` from here; the runner itself is
`meshserve.scheduler.store.migrate` (Alembic's script_location is the `migrations`
folder beside it). Imports nothing but that module.
"""

from meshserve.scheduler.store.migrate import upgrade

__all__ = ["upgrade"]
