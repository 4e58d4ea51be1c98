"""The router's data plane, shared by both transports (gRPC `server.py`, REST `rest.py`):
resolve the name a client used to a model id, make sure a copy is loaded, pick a copy,
hand the request to the transport's `send`, retry once on another copy when the chosen
one vanished. A route the table kept as a fallback (from before the scheduler's last
snapshot, see table.py) is tried like any other, but when its copy is gone the scheduler
is asked (`EnsureLoaded`), as for a model without a route, instead of trying the
fallback's other endpoints: they are as old as the one that failed.

The data plane never sees payloads: each transport brings a `send(endpoint, budget)`
that forwards the (already rewritten) request its own way and raises `CopyGone` when
the copy is not there any more, or a `MeshError` with the client's status otherwise.
Concurrent misses for one model share one `EnsureLoaded` call to the scheduler.

This is the one call path every Python-served model call takes, unary and streaming alike
(the gRPC door's ModelInfer / ModelMetadata / ModelReady / ModelStreamInfer, the REST door,
the other-RPC handler): resolve, ensure loaded, pick a copy (least-request over this
router's per-pod in-flight counts), count it in flight while `send` runs, count usage when
it succeeds (reported to the scheduler by the app), retry once when the copy is gone
before it answered. A streaming `send` runs the whole stream, so the stream is in flight
on its copy until it ends, and counts as one request in usage.

Owns: `DataPlane` (the in-flight and usage counters, the coalesced ensure calls), name
resolution and its limits (`MAX_NAME_CHARS`).
May import: the routing table, balance, the scheduler client, metrics, settings, the
upstream errors (`CopyGone`), v2 names, payloads (the type only); never a door, the
upstream clients or the app.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from meshserve.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    MeshError,
    Unavailable,
)
from meshserve.router import balance, metrics
from meshserve.router.payloads import PayloadProcessors
from meshserve.router.scheduler_client import SchedulerClient
from meshserve.router.settings import RouterSettings
from meshserve.router.table import Endpoint, RoutingTable
from meshserve.router.upstream_errors import CopyGone
from meshserve.router.v2 import MODEL_HEADERS, ROUTING_HEADERS, VMODEL_HEADERS

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_NAME_CHARS = 253
"""The longest model id or vmodel name there can be (a model id is a folder name, a vmodel a
Kubernetes name): a longer one is refused here, before the scheduler is asked about it."""
Send = Callable[[Endpoint, float], Awaitable[T]]

class DataPlane:
    def __init__(
        self,
        *,
        settings: RouterSettings,
        table: RoutingTable,
        scheduler: SchedulerClient,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.table = table
        self.payloads: PayloadProcessors | None = None  # set by the app when processors are configured
        self.scheduler = scheduler
        self.in_flight: Counter[str] = Counter()
        self.usage: Counter[str] = Counter()
        self._ensuring: dict[str, asyncio.Future[tuple[Endpoint, ...]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = rng or random.Random()
        self._clock = clock  # the table's fallbacks expire on it (the route watcher's clock too)

    # -- model resolution ---------------------------------------------------------------
    @staticmethod
    def name_from_headers(headers: Iterable[tuple[str, str | bytes]]) -> str | None:
        model = vmodel = None
        for key, value in headers:
            if key in ROUTING_HEADERS:
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                if key in MODEL_HEADERS:
                    model = text
                else:
                    vmodel = text
        if model and vmodel:
            raise InvalidArgument("must include only one of model id and vmodel id")
        return model or vmodel

    def resolve(self, name: str | None, headers: Iterable[tuple[str, str | bytes]] = ()) -> str:
        """The model id to serve: a routing header wins over the name in the request.

        A name no model can have is refused: a 10 KB name would otherwise travel to the
        scheduler and come back in its NOT_FOUND message, which no gRPC client reads past
        8 KB of metadata (it sees RESOURCE_EXHAUSTED)."""
        name = self.name_from_headers(headers) or name
        if name and len(name) > MAX_NAME_CHARS:
            raise InvalidArgument(
                f"the model name {name[:40]!r}... is {len(name)} characters long: "
                f"model ids and vmodel names have at most {MAX_NAME_CHARS}"
            )
        if not name:
            raise InvalidArgument("the request names no model: set the model name (or the mm-vmodel-id header)")
        return self.table.resolve(name, now=self._clock())

    def vmodel_named(
        self, name: str | None, headers: Iterable[tuple[str, str | bytes]], model_id: str
    ) -> str | None:
        """The vmodel a request named (by header or name), None when it named the model itself."""
        wanted = self.name_from_headers(headers) or name
        return wanted if wanted and wanted != model_id else None

    async def ensure(
        self, model_id: str, *, budget: float, refresh: bool = False, suspect: str | None = None
    ) -> tuple[Endpoint, ...]:
        endpoints = self.table.endpoints(model_id, now=self._clock())
        if endpoints and not refresh:
            return endpoints
        future = self._ensuring.get(model_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._ensuring[model_id] = future
            task = asyncio.create_task(
                self._ensure_call(model_id, future, budget, suspect), name=f"ensure:{model_id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        metrics.miss(model_id)
        started = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(future), budget)
        except TimeoutError as err:
            raise DeadlineExceeded(f"deadline exceeded waiting for a copy of {model_id!r} to load") from err
        finally:
            metrics.cold_wait(model_id, time.monotonic() - started)

    async def _ensure_call(
        self, model_id: str, future: asyncio.Future[tuple[Endpoint, ...]], budget: float, suspect: str | None
    ) -> None:
        try:
            endpoints = await self.scheduler.ensure_loaded(model_id, suspect=suspect, budget=max(budget, 1.0))
            if endpoints:
                self.table.set_endpoints(model_id, endpoints)
            future.set_result(endpoints)
        except Exception as err:  # surface as the waiting requests' error
            future.set_exception(err)
        finally:
            self._ensuring.pop(model_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # mark retrieved: no "never retrieved" warning

    # -- forwarding -----------------------------------------------------------------------
    def pick(self, endpoints: tuple[Endpoint, ...]) -> Endpoint:
        """The copy to send to: least-request over this router's in-flight count per pod."""
        if len(endpoints) == 1:
            return endpoints[0]
        return balance.pick(endpoints, {e: self.in_flight[e.pod_id] for e in endpoints}, self._rng)

    async def call(self, model_id: str, send: Send[T], *, budget: float) -> T:
        """Run `send` against a loaded copy of `model_id`; once more on another copy if it vanished."""
        deadline = time.monotonic() + budget
        refresh = False
        suspect: str | None = None
        for attempt in (1, 2):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"deadline exceeded waiting for {model_id!r}")
            endpoints, fallback = self.table.lookup(model_id, now=self._clock())
            if not endpoints or refresh:
                endpoints = await self.ensure(model_id, budget=remaining, refresh=refresh, suspect=suspect)
                fallback = False
            if not endpoints:
                raise Unavailable(f"model {model_id!r} has no loaded copy")
            endpoint = self.pick(endpoints)
            pod = endpoint.pod_id
            self.in_flight[pod] += 1
            try:
                result = await send(endpoint, deadline - time.monotonic())
                self.usage[model_id] += 1
                return result
            except CopyGone as gone:
                if attempt == 2:
                    raise Unavailable(f"no copy of {model_id!r} answered: {gone}") from gone
                log.info("copy of %s on %s is gone (%s); retrying", model_id, pod, gone)
                if fallback:
                    self.table.drop_fallback(model_id)
                    refresh = True
                else:
                    self.table.drop_endpoint(model_id, pod)
                    refresh = not self.table.endpoints(model_id, now=self._clock())
                suspect = pod
            finally:
                self.in_flight[pod] -= 1
        raise AssertionError("unreachable")


__all__ = ["MODEL_HEADERS", "ROUTING_HEADERS", "VMODEL_HEADERS", "CopyGone", "DataPlane", "MeshError"]
