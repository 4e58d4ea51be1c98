"""A work queue that coalesces keys, as client-go's workqueue does (kopf does the same per object).

Owns: which object keys are due for a reconcile. Bursts of events for one key collapse into one
pending entry; a key being processed is never handed to a second worker at the same time; a key
added while it is processed is queued again once the worker calls `done` (so no change is lost).
`add_after` schedules a delayed add (requeue); an earlier add wins over a later timer.

Invariants: a key is in at most one of {queued, processing}; `len(queue)` counts queued keys
only; after `shutdown()` `get()` raises `QueueShutdown` and adds are ignored.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Key:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.namespace}/{self.name}"


class QueueShutdown(Exception):
    """The queue was shut down."""


class WorkQueue:
    def __init__(self) -> None:
        self._queue: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._ready = asyncio.Event()
        self._closed = False
        self.adds = 0
        """Every add call (for metrics/tests: how much was coalesced)."""

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: Key) -> None:
        if self._closed:
            return
        self.adds += 1
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        self._ready.set()

    def add_after(self, key: Key, delay: float) -> None:
        """Add `key` after `delay` seconds unless it is added (or already due) earlier."""
        if self._closed:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None and existing.when() <= loop.time() + delay:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> Key:
        while True:
            if self._closed:
                raise QueueShutdown()
            if self._queue:
                key = self._queue.popleft()
                self._queued.discard(key)
                self._processing.add(key)
                return key
            self._ready.clear()
            await self._ready.wait()

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def shutdown(self) -> None:
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._ready.set()
