"""`Coalesced`: concurrent callers share runs, and none gets a run that began before its call."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.common.coalesce import Coalesced


class Source:
    """A refresh that reads a value, held open until the test lets it finish."""

    def __init__(self) -> None:
        self.value = 0          # what the world looks like now
        self.seen = -1          # what the last finished run read
        self.gates: list[asyncio.Event] = []
        self.active = 0
        self.most_active = 0
        self.fail_next = False
        self.started = asyncio.Event()

    async def read(self) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            start = self.value                 # the run reads at its start
            gate = asyncio.Event()
            self.gates.append(gate)
            self.started.set()
            await gate.wait()
            if self.fail_next:
                self.fail_next = False
                raise ConnectionError("store down")
            self.seen = start
        finally:
            self.active -= 1

    async def open_gates(self) -> None:
        """Let every run finish, including the ones chained after them."""
        for _ in range(100):
            await asyncio.sleep(0)   # a scheduling point, not a wait for time: lets chained runs start
            for gate in self.gates:
                gate.set()


async def test_callers_during_a_run_share_one_later_run_and_see_what_came_before_them() -> None:
    src = Source()
    refresh = Coalesced(src.read)
    first = asyncio.ensure_future(refresh())
    await src.started.wait()             # the first run has started and read value 0
    src.value = 1                        # a change made after that read ...
    late = [asyncio.ensure_future(refresh()) for _ in range(20)]   # ... then 20 callers
    await src.open_gates()
    await asyncio.gather(first, *late)
    assert src.seen == 1                 # the callers after the change got a run that saw it
    assert refresh.runs == 2             # 21 calls, two runs
    assert src.most_active == 1          # never two at once


async def test_an_error_reaches_the_callers_sharing_the_run_and_the_next_call_runs_again() -> None:
    src = Source()
    refresh = Coalesced(src.read)
    src.fail_next = True
    calls = [asyncio.ensure_future(refresh()) for _ in range(3)]
    await src.open_gates()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results) and refresh.runs == 1
    again = asyncio.ensure_future(refresh())
    await src.open_gates()
    await again
    assert refresh.runs == 2 and src.seen == 0


async def test_a_cancelled_caller_leaves_the_shared_run_to_the_others() -> None:
    src = Source()
    refresh = Coalesced(src.read)
    gone, stays = asyncio.ensure_future(refresh()), asyncio.ensure_future(refresh())
    await src.started.wait()
    gone.cancel()
    src.value = 7
    await src.open_gates()
    await stays
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert refresh.runs == 1 and src.seen == 0


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.sampled_from(["call", "change", "finish"]), min_size=1, max_size=40))
def test_every_call_returns_after_a_run_that_started_after_it(steps: list[str]) -> None:
    """Any interleaving: a call returns only once a run that read the world as of the
    call (or later) has finished; runs never overlap; runs <= 2 x calls."""

    async def scenario() -> None:
        src = Source()
        refresh = Coalesced(src.read)
        calls = 0
        finished: list[tuple[int, int]] = []     # (world at the call, what was seen when it returned)
        futures: list[asyncio.Future[None]] = []
        for step in steps:
            if step == "call":
                calls += 1
                fut = asyncio.ensure_future(refresh())
                fut.add_done_callback(lambda _, at=src.value: finished.append((at, src.seen)))
                futures.append(fut)
            elif step == "change":
                src.value += 1
            else:
                for gate in src.gates:
                    gate.set()
            for _ in range(3):
                await asyncio.sleep(0)   # scheduling points only
        await src.open_gates()
        await asyncio.gather(*futures)
        assert len(finished) == calls
        assert all(seen >= at for at, seen in finished), finished
        assert src.most_active <= 1
        assert refresh.runs <= 2 * max(calls, 1)

    asyncio.run(scenario())
