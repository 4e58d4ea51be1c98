"""balance.CopySlots: per-copy concurrency limits and the line of requests waiting for a
slot (pure; the data plane wakes the waiters it names)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.router.balance import CopySlots, copy_bound


@dataclass(frozen=True)
class Copy:
    pod_id: str
    max_concurrency: int


RNG = random.Random(0)


def test_upstreams_bound_on_what_a_copy_holds() -> None:
    assert [copy_bound(n) for n in (1, 2, 3, 10)] == [16, 16, 24, 80]


def test_choose_takes_the_least_loaded_copy_with_room_and_none_when_all_are_full() -> None:
    slots: CopySlots[Copy, str] = CopySlots()
    a, b = Copy("a", 2), Copy("b", 4)
    assert slots.choose("m", [a, b], {}, RNG) == a          # both empty: the first
    slots.acquire("m", "a")
    assert slots.choose("m", [a, b], {}, RNG) == b          # a is half full, b empty
    slots.acquire("m", "b")
    slots.acquire("m", "b")
    assert slots.choose("m", [a, b], {}, RNG) == a          # 1/2 against 2/4: equal share, a first
    assert slots.choose("m", [a, b], {"a": 5}, RNG) == b    # then the pod with fewer requests
    slots.acquire("m", "a")
    slots.acquire("m", "b")
    slots.acquire("m", "b")
    assert slots.free("m", [a, b]) == []
    assert slots.choose("m", [a, b], {}, RNG) is None
    assert slots.choose("other", [a, b], {}, RNG) == a      # limits are per model copy


def test_an_unlimited_copy_always_has_room_and_a_model_with_one_never_overloads() -> None:
    slots: CopySlots[Copy, str] = CopySlots()
    a, free = Copy("a", 1), Copy("f", 0)
    for _ in range(100):
        slots.acquire("m", "f")
    slots.acquire("m", "a")
    assert slots.choose("m", [a, free], {}, RNG) == free
    assert not slots.limited([a, free]) and not slots.overloaded("m", [a, free])
    assert slots.limited([a]) and not slots.limited([])


def test_balanced_picks_any_copy_with_room() -> None:
    slots: CopySlots[Copy, str] = CopySlots()
    copies = [Copy(p, 1) for p in "abc"]
    slots.acquire("m", "b")
    seen = {slots.choose("m", copies, {}, random.Random(seed), balanced=True) for seed in range(50)}
    assert {c.pod_id for c in seen if c} == {"a", "c"}


def test_overloaded_counts_in_flight_and_waiting_against_the_sum_of_the_bounds() -> None:
    slots: CopySlots[Copy, str] = CopySlots()
    copies = [Copy("a", 1), Copy("b", 3)]   # 16 + 24
    slots.acquire("m", "a")
    for _ in range(3):
        slots.acquire("m", "b")
    for i in range(36):                      # 4 in flight + 36 waiting = 40, the bound
        assert not slots.overloaded("m", copies)
        slots.enqueue("m", f"w{i}")
    assert slots.overloaded("m", copies)     # the 41st is refused
    slots.forget("m", "w0")
    assert not slots.overloaded("m", copies)


def test_dispatch_hands_slots_oldest_first_and_drops_waiters_that_left() -> None:
    slots: CopySlots[Copy, str] = CopySlots()
    a = Copy("a", 1)
    slots.acquire("m", "a")
    for w in ("w1", "w2", "w3"):
        slots.enqueue("m", w)
    assert slots.dispatch("m", [a], {}, RNG) == []            # full: nobody is woken
    slots.release("m", "a")
    gone = {"w1"}
    assert slots.dispatch("m", [a], {}, RNG, waiting=lambda w: w not in gone) == [("w2", a)]
    assert slots.busy("m", "a") == 1 and slots.queued("m") == 1   # w2's slot is taken already
    slots.release("m", "a")
    assert slots.dispatch("m", [a], {}, RNG) == [("w3", a)]
    slots.release("m", "a")
    assert slots.in_flight == {} and slots.waiting == {}


# -- a property: random arrivals, completions and give-ups ------------------------------------
ops_st = st.lists(
    st.tuples(st.sampled_from(["arrive", "finish", "give-up", "new-copy"]), st.integers(0, 50)), max_size=120
)


@settings(max_examples=300, deadline=None)
@given(limits=st.lists(st.integers(1, 3), min_size=1, max_size=3), ops=ops_st)
def test_no_copy_goes_over_its_limit_nobody_waits_beside_a_free_slot_and_the_line_is_fifo(
    limits: list[int], ops: list[tuple[str, int]]
) -> None:
    """The data plane's use, modelled: an arrival takes a free slot when nobody waits, else
    queues (refused when overloaded); every release and arrival dispatches. Invariants after
    each step: busy <= limit on every copy, no waiter while a slot is free, grants in arrival
    order, and in flight = requests holding a slot."""
    slots: CopySlots[Copy, int] = CopySlots()
    copies = [Copy(f"p{i}", n) for i, n in enumerate(limits)]
    holding: list[tuple[int, str]] = []   # (request, pod)
    waiting: list[int] = []
    granted: list[int] = []
    next_id = 0

    def dispatch() -> None:
        for waiter, copy in slots.dispatch("m", copies, {}, RNG):
            waiting.remove(waiter)
            granted.append(waiter)
            holding.append((waiter, copy.pod_id))

    for kind, n in ops:
        if kind == "arrive":
            next_id += 1
            copy = slots.choose("m", copies, {}, RNG) if not slots.queued("m") else None
            if copy is not None:
                slots.acquire("m", copy.pod_id)
                holding.append((next_id, copy.pod_id))
            elif not slots.overloaded("m", copies):
                slots.enqueue("m", next_id)
                waiting.append(next_id)
                dispatch()
        elif kind == "finish" and holding:
            _, pod = holding.pop(n % len(holding))
            slots.release("m", pod)
            dispatch()
        elif kind == "give-up" and waiting:
            waiter = waiting.pop(n % len(waiting))
            slots.forget("m", waiter)
        elif kind == "new-copy" and len(copies) < 5:
            copies.append(Copy(f"p{len(copies)}", 1 + n % 3))
            dispatch()
        for copy in copies:
            busy = sum(1 for _, pod in holding if pod == copy.pod_id)
            assert slots.busy("m", copy.pod_id) == busy <= copy.max_concurrency
        if waiting:
            assert slots.free("m", copies) == []
        assert slots.queued("m") == len(waiting)
        assert granted == sorted(granted)
