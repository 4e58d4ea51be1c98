"""WorkQueue coalescing/dirty semantics and the pure back-off function."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from meshserve.common.backoff import backoff_delay
from meshserve.controller.workqueue import Key, QueueShutdown, WorkQueue

A, B = Key("InferenceService", "ns", "a"), Key("InferenceService", "ns", "b")


async def test_burst_of_adds_collapses_into_one_entry() -> None:
    q = WorkQueue()
    for _ in range(50):
        q.add(A)
    q.add(B)
    assert len(q) == 2 and q.adds == 51
    assert await q.get() == A and await q.get() == B


async def test_key_added_while_processing_is_requeued_after_done_not_handed_out_twice() -> None:
    q = WorkQueue()
    q.add(A)
    key = await q.get()
    q.add(A)
    q.add(A)
    assert len(q) == 0          # not handed to a second worker while the first holds it
    q.done(key)
    assert len(q) == 1 and await q.get() == A


async def test_add_after_fires_and_earlier_add_wins() -> None:
    q = WorkQueue()
    q.add_after(A, 0.01)
    assert len(q) == 0
    assert await asyncio.wait_for(q.get(), 2) == A
    q.done(A)
    q.add_after(B, 30)
    q.add(B)                    # due now: the timer is dropped
    assert await q.get() == B
    q.done(B)
    assert len(q) == 0


async def test_shutdown_wakes_waiting_workers() -> None:
    q = WorkQueue()
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)  # one loop turn, not a wait for time: the new task runs up to its wait
    assert not waiter.done()
    q.shutdown()
    try:
        await asyncio.wait_for(waiter, 2)
    except QueueShutdown:
        pass
    else:
        raise AssertionError("get() returned after shutdown")
    q.add(A)
    assert len(q) == 0


@given(attempt=st.integers(min_value=-3, max_value=10_000), rand=st.floats(min_value=0, max_value=1),
       base=st.floats(min_value=0.001, max_value=5), cap=st.floats(min_value=0.01, max_value=60))
def test_backoff_is_jittered_within_half_to_full_capped_ceiling(attempt: int, rand: float, base: float, cap: float) -> None:
    delay = backoff_delay(attempt=attempt, rand=rand, base=base, cap=cap)
    ceiling = min(cap, base * 2 ** min(max(attempt, 0), 30))
    assert ceiling / 2 - 1e-9 <= delay <= ceiling + 1e-9
    assert delay <= cap + 1e-9
