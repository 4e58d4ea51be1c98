"""The scheduler's event log: every decision (`placed`, `evicted`, `scaled-up`, `failed`,
...) written to the registry's `events` table, best-effort.

Owns the one rule for registry writes made on the side of a decision: when Postgres is
down (`Unavailable`) the write is logged and skipped, never raised, so placement and
routing go on without it. Every use case records through one `EventLog`; none passes
callbacks around for it.

May import: `meshserve.common` and the store wing's registry. Never imports the use
cases or the transports.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from meshserve.common.errors import Unavailable
from meshserve.scheduler.store.registry import Registry

log = logging.getLogger(__name__)


class EventLog:
    """Records scheduler events in the registry; skips (and logs) writes Postgres refuses."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def record(self, kind: str, **fields: Any) -> None:
        """Add one event (`model_id=`, `pod_id=`, `message=`, `details=`), best-effort."""
        await self.best_effort(self.registry.add_event(kind=kind, **fields))

    async def best_effort(self, write: Awaitable[Any]) -> None:
        """Await a registry write; log and skip it when Postgres is unavailable."""
        try:
            await write
        except Unavailable as err:
            log.warning("registry write skipped: %s", err.message)
