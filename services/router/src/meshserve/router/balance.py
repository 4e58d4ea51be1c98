"""Which copy a request goes to, and when it must wait for one.

`pick`: power-of-two-choices over the router's own in-flight counts. Pick two distinct
copies at random and send to the one with fewer requests in flight from this router
(ties: the first pick). With one copy there is no choice.

`CopySlots`: the runtime's per-copy concurrency limit (`perModelConcurrencyLimit`, on each
route endpoint as `max_concurrency`): at most that many of this router's requests in flight
on a copy; the rest wait, first come first served, for a slot on any copy of the model
(least-loaded first), within upstream's bound on what a copy holds (`copy_bound`).

PURE apart from the injected random source, so tests can make it deterministic.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


def pick(candidates: Sequence[T], in_flight: Mapping[T, int], rng: random.Random) -> T:
    if not candidates:
        raise ValueError("no candidates")
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(range(len(candidates)), 2)
    first, second = candidates[a], candidates[b]
    return second if in_flight.get(second, 0) < in_flight.get(first, 0) else first


# -- per-copy concurrency limits ------------------------------------------------------------
QUEUE_FLOOR = 16
"""Upstream's bound on the requests one copy holds, in flight and waiting together, is
max(16, 8 x its limit) (ModelMesh's `MaxConcCacheEntry`, `MM_MAX_INFLIGHT_PER_MODEL_COPY`
unset); beyond it a request fails at once with RESOURCE_EXHAUSTED `Model queue overload`."""
QUEUE_PER_SLOT = 8


def copy_bound(limit: int) -> int:
    """Requests one copy with `limit` holds at most, in flight and waiting (upstream's rule)."""
    return max(QUEUE_FLOOR, QUEUE_PER_SLOT * limit)


class _Limited(Protocol):
    @property
    def pod_id(self) -> str: ...

    @property
    def max_concurrency(self) -> int: ...


E = TypeVar("E", bound=_Limited)
W = TypeVar("W")


class CopySlots(Generic[E, W]):
    """Requests in flight on each copy (model, pod) against the copy's limit
    (`max_concurrency`, 0 = unlimited), and, per model, the requests waiting for a free slot
    on any of its copies, first come first served.

    PURE: the waiters are opaque tokens (the data plane's futures); `dispatch` says which
    waiter gets which copy, the caller wakes it. A slot handed to a waiter is counted in
    flight at once, so a request arriving meanwhile cannot take it first."""

    def __init__(self) -> None:
        self.in_flight: dict[tuple[str, str], int] = {}
        self.waiting: dict[str, deque[W]] = {}

    # -- reads ----------------------------------------------------------------------------
    def busy(self, model: str, pod: str) -> int:
        return self.in_flight.get((model, pod), 0)

    def queued(self, model: str) -> int:
        return len(self.waiting.get(model, ()))

    @staticmethod
    def limited(endpoints: Sequence[E]) -> bool:
        """Every copy has a limit (one unlimited copy always has room: nothing ever waits)."""
        return bool(endpoints) and all(e.max_concurrency > 0 for e in endpoints)

    def free(self, model: str, endpoints: Sequence[E]) -> list[E]:
        """The copies with a free slot, in the order given."""
        return [e for e in endpoints if not e.max_concurrency or self.busy(model, e.pod_id) < e.max_concurrency]

    def choose(
        self, model: str, endpoints: Sequence[E], pod_load: Mapping[str, int], rng: random.Random,
        *, balanced: bool = False,
    ) -> E | None:
        """A copy with a free slot, None when every copy is full: the least-loaded one (fewest
        of this model's requests in flight, as a share of its limit; then fewest requests
        on its pod; then the first), or with `balanced` any free copy at random (the client
        spreads its requests already: mm-balanced)."""
        free = self.free(model, endpoints)
        if not free:
            return None
        if balanced:
            return free[rng.randrange(len(free))]

        def load(e: E) -> tuple[float, int]:
            busy = self.busy(model, e.pod_id)
            return (busy / e.max_concurrency if e.max_concurrency else 0.0, pod_load.get(e.pod_id, 0))

        return min(free, key=load)

    def overloaded(self, model: str, endpoints: Sequence[E]) -> bool:
        """One more waiter would break upstream's bound: the model's copies together hold at
        most the sum of `copy_bound` of each, in flight and waiting."""
        if not self.limited(endpoints):
            return False
        held = sum(self.busy(model, e.pod_id) for e in endpoints) + self.queued(model)
        return held >= sum(copy_bound(e.max_concurrency) for e in endpoints)

    # -- changes --------------------------------------------------------------------------
    def acquire(self, model: str, pod: str) -> None:
        key = (model, pod)
        self.in_flight[key] = self.in_flight.get(key, 0) + 1

    def release(self, model: str, pod: str) -> None:
        key = (model, pod)
        n = self.in_flight.get(key, 0) - 1
        if n > 0:
            self.in_flight[key] = n
        else:
            self.in_flight.pop(key, None)

    def enqueue(self, model: str, waiter: W) -> None:
        self.waiting.setdefault(model, deque()).append(waiter)

    def forget(self, model: str, waiter: W) -> None:
        """A waiter that stopped waiting (its deadline passed, its client went)."""
        queue = self.waiting.get(model)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            del self.waiting[model]

    def dispatch(
        self, model: str, endpoints: Sequence[E], pod_load: Mapping[str, int], rng: random.Random,
        *, waiting: Callable[[W], bool] = lambda _: True,
    ) -> list[tuple[W, E]]:
        """Hand free slots to the model's waiters, oldest first (each counted in flight on
        its copy); waiters for which `waiting` is false have gone and are dropped."""
        queue = self.waiting.get(model)
        grants: list[tuple[W, E]] = []
        while queue:
            if not waiting(queue[0]):
                queue.popleft()
                continue
            endpoint = self.choose(model, endpoints, pod_load, rng)
            if endpoint is None:
                break
            waiter = queue.popleft()
            self.acquire(model, endpoint.pod_id)
            grants.append((waiter, endpoint))
        if queue is not None and not queue:
            del self.waiting[model]
        return grants
