"""One route table per scheduler process, fed from the route log, fanned out to routers.

A single background task (started by the first `WatchRoutes`) loads the table from
Redis, then loops: read the log entries after its position, apply them to the table,
encode one `RouteUpdate` for what changed and hand the bytes to every subscriber; then
wait for the log's wake-up (or the poll interval). It loads the table again, and sends
every subscriber a snapshot, when the log no longer holds its position.

A subscriber (one per `WatchRoutes` stream) gets a snapshot of the table as it is when
it subscribes, then every update after it, in order, through its own queue. One that
falls more than `queue_limit` updates behind is given a fresh snapshot instead of the
backlog. Redis errors are logged and retried with a capped back-off; subscribers keep
the routes they have meanwhile. An entry the table cannot apply (a log written by a
newer version, say) is logged and the table is loaded again.

Before every load (the first, and each one a new epoch or a lost position calls for) the
hub awaits `before_load`, if given: app.py passes the service's registry-mirror check
(`store.mirror.RegistryMirror.ensure`). After Redis lost its data the first write
starts a new epoch before the mirror is back, and a table loaded from that epoch would
send the routes of copies loaded meanwhile as removals (their models are not listed);
the check rebuilds the mirror first, which starts yet another epoch, so the load reads
that one and nothing is published from the intermediate one. While the marker is current
the check is one read (no rebuild, no new epoch), so a load it precedes is not undone by
it. A check that fails (Postgres down) is logged and the table is loaded anyway, as
before; the mirror loop's rebuild, when Postgres is back, starts an epoch that reloads it.

May import: `meshserve.common`, `routing.log`, `routing.table`, `metrics`. Never imports
the use cases or the transports; the mirror check before a load is passed in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.exceptions import RedisError

from meshserve.common.backoff import backoff_delay
from meshserve.scheduler.routing.log import Position, RouteLog, Waiter
from meshserve.scheduler.routing.table import RouteTable

log = logging.getLogger(__name__)


async def load_table(routes: RouteLog) -> tuple[RouteTable, Position]:
    state = await routes.load()
    table = RouteTable(models=state.models, loaded=state.loaded, pods=state.pods, vmodels=state.vmodels)
    return table, state.position


async def catch_up(routes: RouteLog, table: RouteTable, position: Position, *, most: int) -> tuple[
    Position | None, bytes | None, int
]:
    """One step: the entries after `position` (at most `most`) applied to `table`.
    Returns (the new position or None when the table must be loaded again, the
    `RouteUpdate` bytes for what changed or None, the number of entries read)."""
    entries = await routes.read(position, most=most)
    if entries.reload:
        return None, None, 0
    changed = table.apply(entries.flat)
    payload = table.changes(changed, version=entries.position.seq) if changed else None
    return entries.position, payload, entries.count


class RouteHub:
    def __init__(
        self,
        routes: RouteLog,
        *,
        poll_seconds: float = 5.0,
        most: int = 20_000,
        queue_limit: int = 256,
        before_load: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.routes = routes
        self.before_load = before_load
        self.poll_seconds = poll_seconds
        self.most = most
        self.queue_limit = queue_limit
        self._subscribers: set[asyncio.Queue[bytes]] = set()   # one queue per subscriber
        self._table = RouteTable()
        self._version = 0                      # of the table as it is
        self._position: Position | None = None  # None: (re)load the table first
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waiter: Waiter | None = None
        self._closed = False
        self._table_id = 0                     # bumped on every load: versions restart with an epoch
        self._snapshot_cache: tuple[tuple[int, int], bytes] | None = None

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="route-hub")

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # a read blocked in redis-py has been seen to outlive its cancellation (the
            # task stays "cancelling" on the socket): closing the waiter's connection ends
            # the read, and the loop sees `_closed`
            _, pending = await asyncio.wait({task}, timeout=2.0)
            if pending and self._waiter is not None:
                await self._waiter.close()
                _, pending = await asyncio.wait({task}, timeout=5.0)
            if pending:
                log.warning("route hub: its task did not stop; left behind")
            elif not task.cancelled() and task.exception() is not None:
                log.warning("route hub stopped with %r", task.exception())
        if self._waiter is not None:
            await self._waiter.close()
            self._waiter = None

    async def subscribe(self) -> AsyncIterator[bytes]:
        """A snapshot, then every update after it (serialised `RouteUpdate`s)."""
        self._start()
        await self._ready.wait()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        # no await between the snapshot and joining: nothing can be missed or doubled
        queue.put_nowait(self._snapshot())
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

    def _snapshot(self) -> bytes:
        """The table's snapshot, encoded once per version (100,000 routes take ~0.2 s, on
        the event loop: routers reconnecting together after a reload share one)."""
        if self._snapshot_cache is None or self._snapshot_cache[0] != (self._table_id, self._version):
            self._snapshot_cache = ((self._table_id, self._version), self._table.snapshot(version=self._version))
        return self._snapshot_cache[1]

    def _publish(self, payload: bytes) -> None:
        for queue in self._subscribers:
            if queue.qsize() >= self.queue_limit:
                log.warning("a route subscriber fell %d updates behind: sending it a snapshot", self.queue_limit)
                self._replace_with_snapshot(queue)
            else:
                queue.put_nowait(payload)

    def _replace_with_snapshot(self, queue: asyncio.Queue[bytes]) -> None:
        """Drop what `queue` has not sent yet; the table's snapshot replaces it."""
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(self._snapshot())

    async def _run(self) -> None:
        self._waiter = self.routes.waiter()
        attempt = 0
        while not self._closed:
            # 0.1 s doubling to 5 s, no jitter (one hub per replica, nothing to spread)
            delay = backoff_delay(attempt=attempt, rand=1.0, base=0.1, cap=5.0)
            try:
                await self._step()
                attempt = 0
            except asyncio.CancelledError:
                raise
            except RedisError as err:  # Redis down or restarting: keep what we have, retry
                log.warning("route hub: %s: %s; retrying in %.1fs", type(err).__name__, err, delay)
                await asyncio.sleep(delay)
                attempt += 1
            except Exception:  # an entry the table could not apply: it may be half-applied
                log.exception("route hub: the route log could not be applied; loading the table again")
                self._position = None
                await asyncio.sleep(delay)
                attempt += 1

    async def _before_load(self) -> None:
        if self.before_load is None:
            return
        try:
            await self.before_load()
        except Exception as err:   # Postgres down, mostly: load what Redis has (the mirror loop repairs it)
            log.warning("route hub: loading the table without the registry mirror check: %s: %s",
                        type(err).__name__, err)

    async def _step(self) -> None:
        assert self._waiter is not None
        if self._position is None:
            await self._before_load()
            self._table, self._position = await load_table(self.routes)
            self._table_id += 1
            self._version = self._position.seq
            log.info("route table loaded: %d models, %d pods (log %s)",
                     len(self._table.registered), len(self._table.pods), self._position)
            for queue in self._subscribers:
                self._replace_with_snapshot(queue)
            self._ready.set()
        position, payload, count = await catch_up(self.routes, self._table, self._position, most=self.most)
        if position is None:
            self._position = None   # loaded again on the next step
            return
        self._position = position
        self._version = position.seq
        if payload is not None:
            self._publish(payload)
        if count < self.most:
            await self._waiter.wait(self.poll_seconds)
