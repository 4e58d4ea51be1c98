"""Kubernetes Events (core/v1) about the objects the controller reads, or log lines in local mode.

Owns: the `EventRecorder` protocol the `Reconciler` reports through, its two implementations
(`KubeEventRecorder`: core/v1 Events through the API server; `LogEventRecorder`: log lines, for
local mode where there is no API server), the de-duplication of repeated identical events, and
`redact`, which every message goes through before it is recorded.

Protocol (as client-go's EventRecorder + EventCorrelator, reduced):
* `record()` is synchronous, never blocks and never raises: it is called from watch callbacks
  and reconciles. The Kubernetes recorder queues the event (bounded; overflow is dropped with a
  log line) and `run()` writes the queue in the background.
* Identical events (same involved object uid/kind/name, type, reason, message) are one Event
  object: the first occurrence is POSTed, later ones bump `count` and `lastTimestamp` with a
  merge PATCH. A repeat within `repeat_interval` seconds of the last write is only counted; the
  next write carries the accumulated count, so the API sees at most one write per key per
  interval however often a reconcile repeats. If the Event is gone (404, the server's event
  TTL), a fresh one is created. The key cache is an LRU of `cache_size` keys.
* Write failures are logged and dropped: an event is a report, never a reason to fail a reconcile.

Must never: put a credential into a message. `redact` removes URL userinfo and every given secret
value (the caller passes the storage-config credential values); messages are capped at 1 kB.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from meshserve.controller import kube
from meshserve.controller.kube import KubeApi, KubeError, ResourceKind

log = logging.getLogger(__name__)

COMPONENT = "meshserve-controller"
MAX_MESSAGE = 1024

# reasons
INVALID_CONFIG = "InvalidConfig"
CONFIG_KEY_IGNORED = "ConfigKeyIgnored"
INVALID_SPEC = "InvalidSpec"
SCALED_TO_ZERO = "ScaledToZero"
SCALED_UP = "ScaledUp"


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclass(frozen=True)
class InvolvedObject:
    kind: str
    api_version: str
    name: str
    namespace: str = ""
    uid: str = ""
    resource_version: str = ""

    @classmethod
    def of(cls, kind: ResourceKind, obj: Mapping[str, Any] | None, *, namespace: str = "", name: str = "") -> InvolvedObject:
        """The reference to `obj` (or to `namespace/name` when the object is not known)."""
        meta = (obj or {}).get("metadata") or {}
        return cls(
            kind=kind.kind, api_version=kind.api_version, name=str(meta.get("name") or name),
            namespace=str(meta.get("namespace") or namespace) if kind.namespaced else "",
            uid=str(meta.get("uid") or ""), resource_version=str(meta.get("resourceVersion") or ""),
        )

    def to_k8s(self) -> dict[str, str]:
        ref = {"kind": self.kind, "apiVersion": self.api_version, "name": self.name}
        if self.namespace:
            ref["namespace"] = self.namespace
        if self.uid:
            ref["uid"] = self.uid
        if self.resource_version:
            ref["resourceVersion"] = self.resource_version
        return ref


class EventRecorder(Protocol):
    def record(self, obj: InvolvedObject, *, type: EventType, reason: str, message: str) -> None:
        """Report an event about `obj`; never blocks, never raises."""
        ...

    def run(self) -> Coroutine[Any, Any, None]:
        """Deliver recorded events until cancelled (returns at once for recorders that deliver at once)."""
        ...


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(message: str, secrets: Iterable[str] = ()) -> str:
    """`message` without URL userinfo and without any of `secrets` (values shorter than 4 characters
    are not replaced: they would mangle ordinary words), capped at `MAX_MESSAGE` characters."""
    out = _USERINFO.sub(r"\g<scheme>***@", message)
    for value in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        out = out.replace(value, "***")
    if len(out) > MAX_MESSAGE:
        out = out[: MAX_MESSAGE - 3] + "..."
    return out


def secret_strings(value: Any) -> Iterable[str]:
    """Every scalar inside a credential structure, as text (what `redact` must remove)."""
    if isinstance(value, Mapping):
        for v in value.values():
            yield from secret_strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from secret_strings(v)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        yield str(value)


class LogEventRecorder:
    """Local mode: each event is a log line (Warning -> WARNING, Normal -> INFO); repeats are logged too."""

    def record(self, obj: InvolvedObject, *, type: EventType, reason: str, message: str) -> None:
        level = logging.WARNING if type is EventType.WARNING else logging.INFO
        where = f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name
        log.log(level, "event %s %s on %s %s: %s", type.value, reason, obj.kind, where, message)

    async def run(self) -> None:
        return None


@dataclass(frozen=True)
class _Pending:
    obj: InvolvedObject
    type: EventType
    reason: str
    message: str
    at: float


@dataclass
class _Seen:
    name: str            # the Event object's name
    namespace: str
    count: int           # occurrences so far (the API has `written` of them)
    written: int
    first: float
    last_write: float


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeEventRecorder:
    """core/v1 Events in `namespace` (the served namespace: also for cluster-scoped objects)."""

    def __init__(
        self, api: KubeApi, *, namespace: str, repeat_interval: float = 60.0, queue_size: int = 1000,
        cache_size: int = 4096, clock: Callable[[], float] = time.time, instance: str = "",
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.repeat_interval = repeat_interval
        self.cache_size = cache_size
        self.clock = clock
        self.instance = instance
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_size)
        self.seen: OrderedDict[tuple[str, ...], _Seen] = OrderedDict()
        self.dropped = 0

    def record(self, obj: InvolvedObject, *, type: EventType, reason: str, message: str) -> None:
        log.debug("event %s %s on %s %s/%s: %s", type.value, reason, obj.kind, obj.namespace, obj.name, message)
        try:
            self.queue.put_nowait(_Pending(obj=obj, type=type, reason=reason, message=message, at=self.clock()))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("event queue full; dropped %s %s on %s %s", type.value, reason, obj.kind, obj.name)

    async def run(self) -> None:
        while True:
            await self.write(await self.queue.get())

    async def flush(self) -> None:
        """Write everything queued now (tests; `run` does this continuously)."""
        while not self.queue.empty():
            await self.write(self.queue.get_nowait())

    @staticmethod
    def _key(p: _Pending) -> tuple[str, ...]:
        o = p.obj
        return (o.kind, o.namespace, o.name, o.uid, p.type.value, p.reason, p.message)

    async def write(self, p: _Pending) -> None:
        """Create or bump the Event for `p`; failures are logged, never raised."""
        key = self._key(p)
        seen = self.seen.get(key)
        try:
            if seen is None:
                self._remember(key, await self._create(p, count=1, first=p.at))
                return
            self.seen.move_to_end(key)
            seen.count += 1
            if p.at - seen.last_write < self.repeat_interval:
                return     # counted; the next write carries it
            try:
                await self.api.merge_patch(
                    kube.EVENT, namespace=seen.namespace, name=seen.name,
                    patch={"count": seen.count, "lastTimestamp": format_time(p.at)},
                )
            except KubeError as err:
                if err.status != 404:
                    raise
                self._remember(key, await self._create(p, count=seen.count, first=seen.first))
                return
            seen.written, seen.last_write = seen.count, p.at
        except asyncio.CancelledError:
            raise
        except Exception as err:    # a report must never break the controller
            log.warning("could not write event %s on %s %s (%s: %s)", p.reason, p.obj.kind, p.obj.name,
                        type(err).__name__, err)

    def _remember(self, key: tuple[str, ...], seen: _Seen) -> None:
        self.seen[key] = seen
        self.seen.move_to_end(key)
        while len(self.seen) > self.cache_size:
            self.seen.popitem(last=False)

    async def _create(self, p: _Pending, *, count: int, first: float) -> _Seen:
        name = f"{p.obj.name}.{uuid.uuid4().hex[:16]}"
        namespace = p.obj.namespace or self.namespace
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": p.obj.to_k8s(),
            "reason": p.reason, "message": p.message, "type": p.type.value,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT, "reportingInstance": self.instance,
            "firstTimestamp": format_time(first), "lastTimestamp": format_time(p.at), "count": count,
        }
        await self.api.create(kube.EVENT, namespace=namespace, body=body)
        return _Seen(name=name, namespace=namespace, count=count, written=count, first=first, last_write=p.at)
