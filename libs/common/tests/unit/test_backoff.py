"""The pure back-off: jittered within [ceiling/2, ceiling], ceiling = base*2^n capped."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshserve.common.backoff import backoff_delay


@given(attempt=st.integers(min_value=-3, max_value=10_000), rand=st.floats(min_value=0, max_value=1),
       base=st.floats(min_value=0.001, max_value=5), cap=st.floats(min_value=0.01, max_value=60))
def test_backoff_is_jittered_within_half_to_full_capped_ceiling(attempt: int, rand: float, base: float, cap: float) -> None:
    delay = backoff_delay(attempt=attempt, rand=rand, base=base, cap=cap)
    ceiling = min(cap, base * 2 ** min(max(attempt, 0), 30))
    assert ceiling / 2 - 1e-9 <= delay <= ceiling + 1e-9
    assert delay <= cap + 1e-9


def test_backoff_grows_then_stops_at_the_cap() -> None:
    delays = [backoff_delay(attempt=n, rand=1.0, base=0.1, cap=1.0) for n in range(8)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[4:] == [1.0] * 4
