"""Capped, jittered exponential back-off as a pure function (the randomness is passed in).

Owns the one retry delay every service uses (watch restarts, reconcile retries, waiting for a
model server, scheduler calls). Pure: imports nothing but the standard library's typing; the
caller sleeps and supplies `rand` (e.g. `random.random()`), so tests need no clock.

Invariant: for every attempt >= 0 and `rand` in [0, 1), the delay lies in
[base * 2**attempt / 2, base * 2**attempt] capped at `cap`, and is never negative.
"""

from __future__ import annotations


def backoff_delay(*, attempt: int, rand: float, base: float = 0.2, cap: float = 10.0) -> float:
    """Seconds to wait before retry number `attempt` (0-based): "equal jitter" of base*2^n."""
    ceiling = min(cap, base * float(2 ** min(max(attempt, 0), 30)))
    return ceiling / 2 + ceiling / 2 * min(max(rand, 0.0), 1.0)
