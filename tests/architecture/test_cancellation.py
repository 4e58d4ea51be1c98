"""No service code waits with `asyncio.wait_for`, which on Python 3.11 can swallow a cancellation.

3.11's `wait_for` returns the inner result when the cancellation of its caller arrives in the same
loop step as that result: the caller never sees its `CancelledError` and goes on (in CI the
scheduler's leader loop, cancelled at stop, went on sleeping past the stop grace). The rule is
ruff's banned-api entry in pyproject.toml (`TID251`, tests and benchmarks exempt); this test runs it
as part of `make test` and shows, on this interpreter, the race the rule exists for.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_wait_for_in_service_code() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run(
        [str(ruff), "check", "--select", "TID251", "--no-cache", "."],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


async def _cancelled_as_the_result_arrives(use_wait_for: bool) -> bool:
    """True when the cancellation reached the waiter; False when it was swallowed."""
    ready = asyncio.Event()
    went_on = asyncio.Event()

    async def waiter() -> None:
        if use_wait_for:
            await asyncio.wait_for(ready.wait(), 10)  # noqa: TID251 - the race under test
        else:
            async with asyncio.timeout(10):
                await ready.wait()
        went_on.set()

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)          # the waiter is parked on the event
    ready.set()                     # the result arrives ...
    task.cancel()                   # ... in the same loop step as the cancellation
    try:
        await task
    except asyncio.CancelledError:
        return True
    return not went_on.is_set()


def test_wait_for_swallows_what_timeout_keeps() -> None:
    assert asyncio.run(_cancelled_as_the_result_arrives(use_wait_for=False))
    if sys.version_info < (3, 12):   # 3.12 rewrote wait_for on top of timeout()
        assert not asyncio.run(_cancelled_as_the_result_arrives(use_wait_for=True))
