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
before it answered (or when its pod stops answering: a request without an answer for
`HUNG_CHECK_AFTER_S` has its pod checked by the scheduler, which drops a hung pod; the
request then goes to a copy that answers, `_watched`). A streaming `send` runs the whole stream, so the stream is in flight
on its copy until it ends, and counts as one request in usage.

Per-copy concurrency limits (the runtime's perModelConcurrencyLimit, on each endpoint as
`max_concurrency`): a model whose copies have one takes a slot on a copy before `send`
(least-loaded copy with room); when every copy is full the request waits in line, first
come first served, for a slot on any copy, until its deadline (DEADLINE_EXCEEDED), and is
refused at once beyond upstream's bound of max(16, 8 x limit) requests per copy
(RESOURCE_EXHAUSTED `Model queue overload`). The wait is upstream's
`modelmesh_req_queue_delay_milliseconds`. The limit is this router's: N routers may send a
copy up to N x its limit. `mm-balanced: true` picks any copy (with room) at random instead of
the least-loaded one.

Owns: `DataPlane` (the in-flight and usage counters, the coalesced ensure calls, the copy
slots and their waiters), name resolution and its limits (`MAX_NAME_CHARS`), the
`mm-balanced` / `mm-required` header values.
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
    ResourceExhausted,
    Unavailable,
)
from meshserve.router import balance, metrics
from meshserve.router.payloads import PayloadProcessors
from meshserve.router.scheduler_client import SchedulerClient
from meshserve.router.settings import RouterSettings
from meshserve.router.table import Endpoint, RoutingTable
from meshserve.router.upstream_errors import CopyGone
from meshserve.router.v2 import (
    BALANCED_HEADER,
    MODEL_HEADERS,
    REQUIRED_HEADER,
    ROUTING_HEADERS,
    VMODEL_HEADERS,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_NAME_CHARS = 253
"""The longest model id or vmodel name there can be (a model id is a folder name, a vmodel a
Kubernetes name): a longer one is refused here, before the scheduler is asked about it."""
HUNG_CHECK_AFTER_S = 1.0
"""A request without an answer this long has its pod checked by the scheduler (`_watched`)."""
HUNG_CHECK_MAX_S = 30.0
"""... again at doubling intervals up to this (a long stream, a slow model: a probe now and then)."""
Send = Callable[[Endpoint, float], Awaitable[T]]

def _switch_header(headers: Iterable[tuple[str, str | bytes]], name: str, *, on: str, off: str) -> bool:
    """A header that takes one of two values (case-insensitive; the last one sent counts):
    True for `on`, False for `off` or when absent; any other value is INVALID_ARGUMENT."""
    value = None
    for key, raw in headers:
        if key == name:
            value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if value is None:
        return False
    text = value.strip().lower()
    if text not in (on, off):
        raise InvalidArgument(f"the {name} header must be {on} or {off}, got {value[:40]!r}")
    return text == on


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
        # per-copy concurrency limits (Endpoint.max_concurrency) and the requests waiting for a slot
        self.slots: balance.CopySlots[Endpoint, asyncio.Future[Endpoint]] = balance.CopySlots()
        self._queued_on: dict[str, tuple[Endpoint, ...]] = {}  # a model's copies as its waiters saw them
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

    @staticmethod
    def names_from_headers(headers: Iterable[tuple[str, str | bytes]]) -> list[str]:
        """Every model (or vmodel) the id headers name, in order: more than one makes a
        multi-model request (server.py). Both kinds at once is refused, as upstream does."""
        models: list[str] = []
        vmodels: list[str] = []
        for key, value in headers:
            if key in ROUTING_HEADERS:
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                (models if key in MODEL_HEADERS else vmodels).append(text)
        if models and vmodels:
            raise InvalidArgument("must include only one of model id and vmodel id")
        return models or vmodels

    @staticmethod
    def require_all(headers: Iterable[tuple[str, str | bytes]]) -> bool:
        """The `mm-required` header of a multi-model request: `all`, every named model must
        exist; `any` (the default), those found answer."""
        return _switch_header(headers, REQUIRED_HEADER, on="all", off="any")

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
        return self.table.resolve(self.scoped(name), now=self._clock())

    def scoped(self, name: str) -> str:
        """The id a client's name stands for: `<namespace>__<name>` on a namespace's router
        (cluster-scope mode, `RouterSettings.namespace`), the name itself otherwise."""
        return f"{self.settings.namespace}__{name}" if self.settings.namespace else name

    def vmodel_named(
        self, name: str | None, headers: Iterable[tuple[str, str | bytes]], model_id: str
    ) -> str | None:
        """The vmodel a request named (by header or name), None when it named the model itself."""
        wanted = self.name_from_headers(headers) or name
        scoped = self.scoped(wanted) if wanted else None
        return scoped if scoped and scoped != model_id else None

    async def ensure(
        self, model_id: str, *, budget: float, refresh: bool = False, suspect: str | None = None, miss: bool = True
    ) -> tuple[Endpoint, ...]:
        """The loaded copies of `model_id`: the table's, else (or `refresh`) the scheduler's,
        which loads one when there is none; `suspect`: a pod whose copy failed (or did not
        answer), which the scheduler probes first. `miss`: counted as a miss (a request that
        found no copy), not for a check of an unanswered request (`_watched`)."""
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
        if miss:
            metrics.miss(model_id)
        started = time.monotonic()
        try:
            async with asyncio.timeout(budget):
                return await asyncio.shield(future)
        except TimeoutError as err:
            raise DeadlineExceeded(f"deadline exceeded waiting for a copy of {model_id!r} to load") from err
        finally:
            if miss:
                metrics.cold_wait(model_id, time.monotonic() - started)

    async def _watched(self, model_id: str, pod_id: str, sending: Awaitable[T], deadline: float) -> T:
        """Await `sending` (a request on `pod_id`'s copy); while it has no answer, ask the
        scheduler after HUNG_CHECK_AFTER_S, then at doubling intervals (up to
        HUNG_CHECK_MAX_S), whether that pod is still there (`EnsureLoaded` with the pod as
        suspect: the scheduler probes its puller and drops a hung or dead pod, re-placing its
        copies). When the copies it names no longer include the pod, the request is cancelled
        there and `CopyGone` raised, so `call` sends it to a copy that answers (a stream is
        replayed, as for a copy gone). A slow copy on a pod that answers its probe is left to
        finish: the request is never failed or duplicated for being slow."""
        task = asyncio.ensure_future(sending)
        started = time.monotonic()
        wait = HUNG_CHECK_AFTER_S
        try:
            while True:
                left = deadline - time.monotonic()
                done, _ = await asyncio.wait({task}, timeout=max(0.0, min(wait, left)))
                if task in done:
                    return task.result()
                left = deadline - time.monotonic()
                if left <= 0:
                    return await task   # its own deadline ends it
                check = asyncio.ensure_future(
                    self.ensure(model_id, budget=left, refresh=True, suspect=pod_id, miss=False)
                )
                done, _ = await asyncio.wait({task, check}, return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    check.cancel()   # the scheduler call itself runs on (shared, shielded)
                    return task.result()
                try:
                    endpoints = check.result()
                except MeshError as err:
                    log.info("no answer from %s for %s in %.1fs; the scheduler could not say: %s",
                             pod_id, model_id, time.monotonic() - started, err)
                    endpoints = ()
                if endpoints and all(e.pod_id != pod_id for e in endpoints):
                    raise CopyGone(f"no answer from pod {pod_id} in {time.monotonic() - started:.1f}s "
                                   "and the scheduler no longer routes it there (hung or dead)")
                wait = min(wait * 2, HUNG_CHECK_MAX_S)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})   # ended before another copy is tried (a stream's source is shared)
            if not task.cancelled():
                task.exception()   # retrieved: an error raised above already, or none

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
    @staticmethod
    def balanced(headers: Iterable[tuple[str, str | bytes]]) -> bool:
        """The `mm-balanced` header: `true` when the client spreads its requests over the
        copies itself (then any copy with room serves it, picked at random, not the
        least-loaded one); absent or `false`: the router balances (upstream's default)."""
        return _switch_header(headers, BALANCED_HEADER, on="true", off="false")

    def pick(self, endpoints: tuple[Endpoint, ...], *, balanced: bool = False) -> Endpoint:
        """The copy to send to: least-request over this router's in-flight count per pod
        (`balanced`: any copy, at random)."""
        if len(endpoints) == 1:
            return endpoints[0]
        if balanced:
            return endpoints[self._rng.randrange(len(endpoints))]
        return balance.pick(endpoints, {e: self.in_flight[e.pod_id] for e in endpoints}, self._rng)

    # -- per-copy concurrency limits ------------------------------------------------------
    async def _slot(self, model_id: str, endpoints: tuple[Endpoint, ...], deadline: float, balanced: bool) -> Endpoint:
        """A copy of a model whose copies have concurrency limits, its slot taken: a free
        one at once when nobody waits, else wait in line (first come first served) for one
        to free on any copy, until `deadline`."""
        slots = self.slots
        started = time.monotonic()
        if not slots.queued(model_id):
            endpoint = slots.choose(model_id, endpoints, self.in_flight, self._rng, balanced=balanced)
            if endpoint is not None:
                slots.acquire(model_id, endpoint.pod_id)
                metrics.queue_wait(model_id, 0.0)
                return endpoint
        if slots.overloaded(model_id, endpoints):
            metrics.QUEUE_OVERLOADS.inc()
            raise ResourceExhausted(
                f"Model queue overload: {slots.queued(model_id)} requests wait for a free slot on the "
                f"{len(endpoints)} copies of {model_id!r} ({_limits(endpoints)} requests at once per copy)"
            )
        waiter: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()
        slots.enqueue(model_id, waiter)
        self._queued_on[model_id] = endpoints
        metrics.QUEUED.inc()
        self._dispatch(model_id)  # a copy may have room that nobody was woken for (a new copy)
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + (deadline - time.monotonic())):
                endpoint = await waiter
        except BaseException as err:
            slots.forget(model_id, waiter)
            if waiter.done() and not waiter.cancelled():  # granted as it stopped waiting: hand it on
                self._release(model_id, waiter.result())
            if isinstance(err, TimeoutError):
                raise DeadlineExceeded(
                    f"deadline exceeded waiting for a free slot on a copy of {model_id!r}: its "
                    f"{len(endpoints)} copies serve {_limits(endpoints)} requests at once each, "
                    f"{slots.queued(model_id)} more requests wait"
                ) from err
            raise
        finally:
            metrics.QUEUED.dec()
            metrics.queue_wait(model_id, time.monotonic() - started)
            if not slots.queued(model_id):
                self._queued_on.pop(model_id, None)
        return endpoint

    def _release(self, model_id: str, endpoint: Endpoint) -> None:
        self.slots.release(model_id, endpoint.pod_id)
        if self.slots.queued(model_id):
            self._dispatch(model_id)

    def routes_changed(self, model_ids: Iterable[str]) -> None:
        """New routes may have room (a new copy, a higher limit): hand it to the models'
        waiters now rather than at the next release (the route watcher calls it for every
        update, snapshots of every route included: with nothing queued, which is the usual
        case, it returns at once instead of walking the update)."""
        if not self.slots.waiting:
            return
        for model_id in model_ids:
            if self.slots.queued(model_id):
                self._dispatch(model_id)

    def _dispatch(self, model_id: str) -> None:
        """Wake the model's waiters that a free slot is now for (oldest first)."""
        endpoints = self.table.endpoints(model_id, now=self._clock()) or self._queued_on.get(model_id, ())
        for waiter, endpoint in self.slots.dispatch(
            model_id, endpoints, self.in_flight, self._rng, waiting=lambda w: not w.done()
        ):
            waiter.set_result(endpoint)

    async def call(self, model_id: str, send: Send[T], *, budget: float, balanced: bool = False) -> T:
        """Run `send` against a loaded copy of `model_id`; once more on another copy if it
        vanished. Copies with a concurrency limit (`Endpoint.max_concurrency`) take at most
        that many of this router's requests at once; the others wait for a slot (`_slot`).
        `balanced`: the client's `mm-balanced: true` (see `balanced`)."""
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
            limited = any(e.max_concurrency for e in endpoints)
            if limited:
                endpoint = await self._slot(model_id, endpoints, deadline, balanced)
            else:
                endpoint = self.pick(endpoints, balanced=balanced)
            pod = endpoint.pod_id
            self.in_flight[pod] += 1
            try:
                result = await self._watched(model_id, pod, send(endpoint, deadline - time.monotonic()), deadline)
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
                if limited:
                    self._release(model_id, endpoint)
        raise AssertionError("unreachable")


def _limits(endpoints: Iterable[Endpoint]) -> str:
    """The copies' limits for a message: "2", or "1-4" when they differ (0: unlimited)."""
    limits = sorted({e.max_concurrency for e in endpoints})
    return str(limits[0]) if len(limits) == 1 else f"{limits[0]}-{limits[-1]}"


__all__ = ["MODEL_HEADERS", "ROUTING_HEADERS", "VMODEL_HEADERS", "CopyGone", "DataPlane", "MeshError"]
