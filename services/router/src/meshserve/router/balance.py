"""Power-of-two-choices over the router's own in-flight counts.

Pick two distinct copies at random and send to the one with fewer requests in flight
from this router (ties: the first pick). With one copy there is no choice. PURE apart
from the injected random source, so tests can make it deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def pick(candidates: Sequence[T], in_flight: Mapping[T, int], rng: random.Random) -> T:
    if not candidates:
        raise ValueError("no candidates")
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(range(len(candidates)), 2)
    first, second = candidates[a], candidates[b]
    return second if in_flight.get(second, 0) < in_flight.get(first, 0) else first
