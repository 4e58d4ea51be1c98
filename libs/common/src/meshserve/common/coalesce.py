"""Concurrent calls of one async refresh share its runs, without returning stale results.

A plain "join the run in flight" would hand a caller the result of a run that started
before its call, so it could miss a change made just before it called. `Coalesced`
guarantees every call returns only after a run that STARTED after the call; runs never
overlap; and all the calls that arrive while a run is going share the one run that
follows it. So N concurrent callers cost at most two runs, however large N is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Coalesced:
    """Wraps `fn` (no arguments, no result): `await coalesced()` as described above.

    A run's exception reaches every call that shares it. A caller that is cancelled
    leaves the shared run going for the others. Owned by one event loop.
    """

    def __init__(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._fn = fn
        self._running: asyncio.Task[None] | None = None   # the run in progress
        self._next: asyncio.Task[None] | None = None      # the run new callers join
        self.runs = 0                                     # runs started so far

    async def __call__(self) -> None:
        task = self._next
        if task is None:
            task = self._next = asyncio.ensure_future(self._run(self._running))
            task.add_done_callback(_retrieve)
        await asyncio.shield(task)

    async def _run(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])   # its outcome belongs to its own callers
        # from here on, callers must get a later run: this one may miss what they did
        self._next = None
        self._running = asyncio.current_task()
        self.runs += 1
        try:
            await self._fn()
        finally:
            if self._running is asyncio.current_task():
                self._running = None


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a run's exception as seen: callers that awaited it got it; if every caller was
    cancelled, nobody is left to, and asyncio would log it as never retrieved."""
    if not task.cancelled():
        task.exception()
