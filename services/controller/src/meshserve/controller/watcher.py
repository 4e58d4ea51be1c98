"""List+watch of one resource kind into an in-memory store (an informer, as kopf's `watching.py`).

Owns: the store of one kind (key -> last seen object), the resourceVersion bookkeeping and the
retry policy of its stream. It calls `on_event(kind, type, new, old)` synchronously for every
change it applies, so the caller only enqueues keys (no I/O in the callback).

Protocol:
* start: LIST, diff against the store (synthetic ADDED/MODIFIED/DELETED), then WATCH from the
  list's resourceVersion; every event (bookmarks too) moves `resource_version` forward, and a
  watch that the server closes (timeoutSeconds) is re-opened from the last one seen;
* `410 Gone` (HTTP or in-stream ERROR) -> re-LIST at once (the history we need is gone);
* any other failure (HTTP error, connection refused, reset, malformed line) -> sleep a capped,
  jittered back-off (`backoff.backoff_delay`) and resume from the last resourceVersion; if that
  one has expired meanwhile, the server answers 410 and we re-list.

Invariants: `synced` is set after the first successful LIST and never cleared; the store only
ever holds objects returned by the server; DELETED for a key not in the store is still reported.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp

from meshserve.common.backoff import backoff_delay
from meshserve.controller import metrics
from meshserve.controller.kube import JSON, KubeApi, KubeError, ResourceKind, WatchExpired

log = logging.getLogger(__name__)

ObjKey = tuple[str, str]


class EventSink(Protocol):
    def __call__(self, kind: ResourceKind, event_type: str, new: JSON, old: JSON | None) -> None: ...


def object_key(obj: JSON) -> ObjKey:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _rv(obj: JSON | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    def __init__(
        self, *, api: KubeApi, kind: ResourceKind, namespace: str, on_event: EventSink,
        watch_timeout_seconds: int = 300, rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, field_selector: str = "",
    ) -> None:
        self.api = api
        self.kind = kind
        self.namespace = namespace if kind.namespaced else ""
        self.field_selector = field_selector
        """E.g. `metadata.name=storage-config`: only those objects are listed and watched."""
        self._selector: dict[str, str] = {"field_selector": field_selector} if field_selector else {}
        self.store: dict[ObjKey, JSON] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.relists = 0
        self._on_event = on_event
        self._timeout = watch_timeout_seconds
        self._rand = rand
        self._sleep = sleep

    def get(self, namespace: str, name: str) -> JSON | None:
        return self.store.get((namespace if self.kind.namespaced else "", name))

    def observe(self, obj: JSON) -> None:
        """Take an object returned by our own write, unless the store already has a newer one."""
        key = object_key(obj)
        current = self.store.get(key)
        new_rv, old_rv = _rv(obj), _rv(current)
        if current is not None and new_rv.isdigit() and old_rv.isdigit() and int(new_rv) <= int(old_rv):
            return
        self.store[key] = obj

    def _apply(self, event_type: str, obj: JSON) -> None:
        metrics.WATCH_EVENTS.labels(self.kind.kind, event_type).inc()
        if rv := _rv(obj):
            self.resource_version = rv
        if event_type == "BOOKMARK":
            return
        key = object_key(obj)
        old = self.store.get(key)
        if event_type == "DELETED":
            self.store.pop(key, None)
        else:
            self.store[key] = obj
        self._on_event(self.kind, event_type, obj, old)

    def apply_event(self, event_type: str, obj: JSON) -> None:
        """Apply one watch event delivered by someone else (local mode's shared watch)."""
        self._apply(event_type, obj)

    async def relist(self, *, reason: str) -> None:
        listed = await self.api.list(self.kind, namespace=self.namespace, **self._selector)
        self.replace(listed.items, listed.resource_version, reason=reason)

    def replace(self, items: list[JSON], resource_version: str, *, reason: str) -> None:
        """Make the store equal `items` (a full listing), reporting the differences as events."""
        self.relists += 1
        metrics.RELISTS.labels(self.kind.kind, reason).inc()
        fresh = {object_key(o): o for o in items}
        for key, gone in list(self.store.items()):
            if key not in fresh:
                self.store.pop(key)
                self._on_event(self.kind, "DELETED", gone, gone)
        for key, obj in fresh.items():
            old = self.store.get(key)
            if old is None or _rv(old) != _rv(obj):
                self.store[key] = obj
                self._on_event(self.kind, "ADDED" if old is None else "MODIFIED", obj, old)
        self.resource_version = resource_version
        self.synced.set()

    async def run(self) -> None:
        """Forever: list, watch, recover (see module docstring). Cancel to stop."""
        need_list, reason, attempt = True, "start", 0
        while True:
            try:
                if need_list:
                    await self.relist(reason=reason)
                    need_list = False
                async for event in self.api.watch(
                    self.kind, namespace=self.namespace, resource_version=self.resource_version,
                    timeout_seconds=self._timeout, **self._selector,
                ):
                    self._apply(event.type, event.object)
                    attempt = 0
                attempt = 0      # the server closed the stream (timeout): resume from the last rv
            except WatchExpired as err:
                # our resourceVersion fell out of the server's history: only a new LIST can resync
                log.info("watch of %s expired (%s); re-listing", self.kind.kind, err.message)
                need_list, reason = True, "expired"
                attempt += 1
                if attempt > 1:   # repeated 410s right after a list: do not hammer the server
                    await self._sleep(backoff_delay(attempt=attempt - 2, rand=self._rand()))
            except (TimeoutError, KubeError, aiohttp.ClientError, OSError, ValueError) as err:
                metrics.WATCH_ERRORS.labels(self.kind.kind).inc()
                delay = backoff_delay(attempt=attempt, rand=self._rand())
                attempt += 1
                log.warning("list/watch of %s failed (%s: %s); retrying in %.2fs",
                            self.kind.kind, type(err).__name__, err, delay)
                await self._sleep(delay)
