"""The fault suite's measures (bench/chaos), on hand-made records: what the chaos tests and
`make chaos` report must be right before they are trusted (no stack needed)."""

from __future__ import annotations

from bench.chaos.cases import served_again_after
from bench.chaos.load import Record, in_flight, in_flight_while, p99, zipf_cum_weights


def rec(sent: float, latency: float, code: str = "OK", model: int = 0) -> Record:
    return Record(sent=sent, latency=latency, code=code, model=model)


def test_in_flight_counts_requests_sent_before_and_answered_after_the_moment() -> None:
    records = [rec(0.0, 1.0), rec(0.5, 0.2), rec(0.9, 0.5), rec(1.5, 0.1)]
    assert in_flight(records, 1.0) == 1       # only the one sent at 0.9 (0.0's answer came at 1.0)
    assert in_flight(records, 0.6) == 2
    assert in_flight(records, 2.0) == 0
    assert in_flight_while(records, 0.8, 1.2) == 2   # 0.0 (answered at 1.0) and 0.9; 0.5 was answered at 0.7
    assert in_flight_while(records, 0.8, 1.6) == 3   # and 1.5


def testserved_again_after_is_zero_without_failures_and_the_worst_model_otherwise() -> None:
    ok = [rec(10.0 + i, 0.1, model=i % 3) for i in range(6)]
    assert served_again_after(ok, {}, injected=10.0) == 0.0
    failing = [*ok, rec(11.0, 0.5, "UNAVAILABLE", model=1), rec(12.0, 0.5, "UNAVAILABLE", model=2)]
    # model 1 fails until 11.5 and next answers at 14.1, model 2 until 12.5 and then at 15.1
    assert abs(served_again_after(failing, {}, injected=10.0) - 5.1) < 1e-9
    # a failure answered before the injection does not count
    assert served_again_after([rec(8.0, 0.5, "UNAVAILABLE"), rec(11.0, 0.1)], {}, injected=10.0) == 0.0


def testserved_again_after_takes_the_sweep_and_says_never_when_a_model_stays_down() -> None:
    records = [rec(11.0, 0.5, "UNAVAILABLE", model=0)]
    assert served_again_after(records, {0: 12.0}, injected=10.0) == 2.0
    assert served_again_after(records, {}, injected=10.0) == float("inf")
    assert served_again_after(records, {0: 11.2}, injected=10.0) == float("inf")  # swept before it failed


def test_zipf_weights_and_p99() -> None:
    cum = zipf_cum_weights(4, 1.0)
    assert [round(b - a, 6) for a, b in zip([0.0, *cum], cum, strict=False)] == [1.0, 0.5, round(1 / 3, 6), 0.25]
    assert p99([]) is None
    assert p99([float(i) for i in range(1, 101)]) == 100.0
    assert p99([1.0, 2.0]) == 2.0
