"""Old import path of the registry, kept for callers outside the scheduler.

`libs/cli/devstack.py` and `tests/integration/test_walking_skeleton.py` import
`to_sync_url` from here; the registry itself is `meshserve.scheduler.store.registry`.
Imports nothing but that module.
"""

from meshserve.scheduler.store.registry import to_sync_url

__all__ = ["to_sync_url"]
