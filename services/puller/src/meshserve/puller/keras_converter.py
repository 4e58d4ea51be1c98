"""A long-lived child process that converts Keras files to SavedModels for Triton.

Importing tensorflow takes seconds; a fresh interpreter per conversion put that on every
cold load of a keras model. The child (`triton_python/keras_to_savedmodel.py --serve`, run
with an interpreter that has tensorflow) imports it once, then converts one model per
request: a JSON line `[source, target]` on its stdin, a JSON line `{"error": null | "..."}`
on its stdout. It starts on the first conversion, or at pod start with `prestart()`, and is
started again after it dies or overruns a timeout. Conversions run one at a time. It is the
puller's child, not the model server's, so the model server's measured size never includes
it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from meshserve.common.errors import DeadlineExceeded, FailedPrecondition

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).parent / "triton_python" / "keras_to_savedmodel.py"
START_TIMEOUT = 300.0  # importing tensorflow on a busy 2-core machine


class KerasConverter:
    def __init__(self, *, python: str) -> None:
        self.python = python
        self._child: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def prestart(self) -> None:
        """Start the child now (pod start), so the first keras load does not pay the import;
        a failure is logged and left for the first conversion to report."""
        async with self._lock:
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    await self._running()
            except (FailedPrecondition, TimeoutError) as err:
                await self._stop()
                log.warning("keras converter did not start: %s", getattr(err, "message", "timed out"))

    async def convert(self, source: Path, target: Path, *, timeout: float) -> None:  # noqa: ASYNC109 - a budget for the child
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    reply = await self._ask(source, target)
            except TimeoutError as err:
                await self._stop()
                raise DeadlineExceeded(f"converting the keras model to a SavedModel took longer than {timeout:.0f}s") from err
            except FailedPrecondition:
                await self._stop()
                raise
        if reply.get("error"):
            raise FailedPrecondition(f"the keras model could not be converted to a SavedModel: {reply['error']}")

    async def close(self) -> None:
        async with self._lock:
            await self._stop()

    async def _ask(self, source: Path, target: Path) -> dict[str, object]:
        child = await self._running()
        assert child.stdin is not None
        child.stdin.write(json.dumps([str(source), str(target)]).encode() + b"\n")
        await child.stdin.drain()
        return await self._reply(child)

    async def _running(self) -> asyncio.subprocess.Process:
        if self._child is not None and self._child.returncode is None:
            return self._child
        try:
            child = await asyncio.create_subprocess_exec(
                self.python, str(SCRIPT), "--serve",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as err:
            raise FailedPrecondition(f"cannot convert the keras model: {self.python} cannot run ({err.strerror})") from err
        self._child = child
        hello = await self._reply(child)  # {"error": null} once tensorflow is imported
        if hello.get("error"):
            raise FailedPrecondition(f"cannot convert the keras model: {hello['error']}")
        return child

    async def _reply(self, child: asyncio.subprocess.Process) -> dict[str, object]:
        assert child.stdout is not None
        line = await child.stdout.readline()
        if not line:
            status = await child.wait()
            raise FailedPrecondition(f"the keras converter ({self.python}) exited with status {status}")
        try:
            reply = json.loads(line)
        except ValueError as err:
            raise FailedPrecondition(f"the keras converter answered {line[:200]!r}") from err
        if not isinstance(reply, dict):
            raise FailedPrecondition(f"the keras converter answered {line[:200]!r}")
        return reply

    async def _stop(self) -> None:
        child, self._child = self._child, None
        if child is None or child.returncode is not None:
            return
        if child.stdin is not None:
            child.stdin.close()  # the child's loop ends at end of input
        try:
            async with asyncio.timeout(5):
                await child.wait()
        except TimeoutError:
            child.kill()
            await child.wait()
