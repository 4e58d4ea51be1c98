"""One run/shutdown skeleton for every service: signals, named background tasks, closers.

Owns how a service lives and stops. `__main__` loads the settings, configures logging and calls
`run_main(serve)`; `serve(life)` (the service's `app.py`) builds its parts on the running loop,
starts its servers, registers what must be closed (`life.on_close`, closed in reverse order),
starts its background loops by name (`life.spawn`) and then `await life.wait()`:

    async def serve(life: Lifecycle) -> None:
        health = Health()
        life.on_close(health.stopping)                 # last registered: runs first
        ...
        life.spawn("heartbeat", heartbeat_loop())
        await life.wait()                              # SIGTERM/SIGINT, `life.stop()` or a task died

Rules it keeps (kopf `aiotasks` / Temporal worker in spirit):
- a named task that raises is logged once with its name and traceback and stops the service; so
  does one that returns while the service runs (a loop that should never end), unless spawned
  with `may_finish=True`;
- shutdown cancels the tasks still running, waits up to `grace` seconds for them, then runs the
  closers in reverse order of registration (each one's failure is logged, the others still run);
  a task spawned with `cancel_at_stop=False` (a server a closer stops gracefully, a loop that
  must outlive a server's grace) keeps running while the closers run: a closer ends it
  (`server.should_exit = True`, `await life.cancel(name)`), and whatever of these is still
  running after the closers is cancelled then (waiting up to `grace` again);
- `run_main` returns the process exit code: 0 after a clean stop, 1 when a task failed (the
  first failure is re-raised from `Lifecycle.__aexit__` as `ServiceFailed`).

May import asyncio, signal, io and logging only; nothing of a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

Closer = Callable[[], Awaitable[Any] | Any]


class ServiceFailed(Exception):
    """A named background task failed (its exception is the `__cause__`); the service stopped."""

    def __init__(self, service: str, task: str) -> None:
        super().__init__(f"{service}: background task {task!r} failed")
        self.service = service
        self.task = task


class Lifecycle:
    """Stop signal, named tasks and closers of one service; `async with` runs the shutdown."""

    def __init__(self, service: str, *, grace: float = 5.0) -> None:
        self.service = service
        self.grace = grace
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._closers: list[tuple[str, Closer]] = []
        self._failure: tuple[str, BaseException] | None = None
        self._after_closers: set[str] = set()  # tasks spawned with cancel_at_stop=False
        self._signals: list[signal.Signals] = []

    # --- stopping ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Begin the shutdown (idempotent; what SIGTERM and SIGINT do)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def wait(self) -> None:
        """Return once the service should stop."""
        await self._stop.wait()

    def handle_signals(self, *signals: signal.Signals) -> None:
        """SIGTERM and SIGINT (or `signals`) call `stop()`; undone at shutdown."""
        loop = asyncio.get_running_loop()
        for sig in signals or (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, self.stop)
                self._signals.append(sig)

    # --- tasks and closers ------------------------------------------------------------------
    def spawn(
        self, name: str, coro: Coroutine[Any, Any, Any], *, may_finish: bool = False, cancel_at_stop: bool = True
    ) -> asyncio.Task[Any]:
        """Run `coro` as the background task `name`, guarded: its failure stops the service.

        `cancel_at_stop=False`: shutdown leaves it running through the closers (one of them
        ends it); it is cancelled only if it still runs after them.
        """
        if name in self._tasks and not self._tasks[name].done():
            coro.close()
            raise ValueError(f"a task named {name!r} is running already")
        task = asyncio.create_task(coro, name=f"{self.service}:{name}")
        self._tasks[name] = task
        if cancel_at_stop:
            self._after_closers.discard(name)
        else:
            self._after_closers.add(name)
        task.add_done_callback(lambda t: self._task_done(name, t, may_finish=may_finish))
        return task

    @property
    def tasks(self) -> dict[str, asyncio.Task[Any]]:
        """The tasks spawned, by name (done ones included)."""
        return dict(self._tasks)

    @property
    def failure(self) -> tuple[str, BaseException] | None:
        """The first task that failed and its exception."""
        return self._failure

    async def cancel(self, *names: str) -> None:
        """Cancel the named tasks and wait for them (up to `grace`); for a closer that ends
        tasks spawned with `cancel_at_stop=False` at its place in the shutdown order."""
        await self._cancel([self._tasks[n] for n in names if n in self._tasks])

    async def _cancel(self, tasks: list[asyncio.Task[Any]]) -> None:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            _, hung = await asyncio.wait(pending, timeout=self.grace)
            for task in hung:
                where = io.StringIO()
                task.print_stack(limit=12, file=where)
                log.warning(
                    "%s: task %s did not stop within %.1f s; it waits in:\n%s",
                    self.service, task.get_name(), self.grace, where.getvalue().rstrip(),
                )

    def on_close(self, closer: Closer, *, name: str = "") -> None:
        """Call `closer()` (awaited when it returns an awaitable) at shutdown, in reverse order."""
        self._closers.append((name or getattr(closer, "__qualname__", repr(closer)), closer))

    def _task_done(self, name: str, task: asyncio.Task[Any], *, may_finish: bool) -> None:
        if task.cancelled():
            return
        err = task.exception()
        if err is None:
            if may_finish or self.stopping:
                return
            err = RuntimeError(f"task {name!r} returned while the service runs")
        if self._failure is None:
            self._failure = (name, err)
        log.error("%s: background task %r failed; stopping", self.service, name, exc_info=err)
        self.stop()

    # --- shutdown ---------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop: cancel the tasks (waiting up to `grace`), then run the closers, newest first;
        then cancel the `cancel_at_stop=False` tasks the closers left running."""
        self.stop()
        log.info("%s shutting down", self.service)
        await self._cancel([t for n, t in self._tasks.items() if n not in self._after_closers])
        while self._closers:
            name, closer = self._closers.pop()
            try:
                result = closer()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("%s: closing %s failed", self.service, name)
        await self._cancel([t for n, t in self._tasks.items() if n in self._after_closers])
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    async def __aenter__(self) -> Lifecycle:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        await self.shutdown()
        if exc is None and self._failure is not None:
            name, err = self._failure
            raise ServiceFailed(self.service, name) from err


def run_main(
    service: str,
    serve: Callable[[Lifecycle], Awaitable[None]],
    *,
    grace: float = 5.0,
    use_uvloop: bool = False,
) -> int:
    """Run `serve(life)` on a new event loop with signal handling; the process exit code."""

    async def main() -> None:
        async with Lifecycle(service, grace=grace) as life:
            life.handle_signals()
            await serve(life)

    if use_uvloop:
        import uvloop

        uvloop.install()
    try:
        asyncio.run(main())
    except ServiceFailed as err:
        log.error("%s", err)
        return 1
    return 0
