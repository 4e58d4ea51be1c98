"""Power-of-two-choices: deterministic with a seeded Random."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserve.router import balance


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError):
        balance.pick([], {}, random.Random(0))


def test_one_candidate_is_always_picked() -> None:
    assert balance.pick(["a"], {"a": 100}, random.Random(0)) == "a"


def test_the_less_loaded_of_two_wins_whatever_the_draw() -> None:
    for seed in range(50):
        assert balance.pick(["a", "b"], {"a": 5, "b": 1}, random.Random(seed)) == "b"
        assert balance.pick(["a", "b"], {"a": 0, "b": 1}, random.Random(seed)) == "a"


def test_the_same_seed_gives_the_same_picks() -> None:
    candidates = ["a", "b", "c", "d"]
    first = [balance.pick(candidates, {}, random.Random(7)) for _ in range(20)]
    assert first == [balance.pick(candidates, {}, random.Random(7)) for _ in range(20)]


def test_ties_spread_over_all_candidates() -> None:
    rng = random.Random(1)
    counts = Counter(balance.pick(["a", "b", "c"], {}, rng) for _ in range(3000))
    assert set(counts) == {"a", "b", "c"} and min(counts.values()) > 800


def test_the_most_loaded_copy_is_never_picked_when_loads_differ() -> None:
    rng = random.Random(2)
    load = {"a": 1, "b": 2, "c": 9}
    assert "c" not in {balance.pick(["a", "b", "c"], load, rng) for _ in range(500)}


@given(loads=st.lists(st.integers(min_value=0, max_value=20), min_size=2, max_size=8), seed=st.integers())
def test_pick_is_never_worse_than_one_of_two_random_draws(loads: list[int], seed: int) -> None:
    candidates = [f"p{i}" for i in range(len(loads))]
    in_flight = dict(zip(candidates, loads, strict=True))
    picked = balance.pick(candidates, in_flight, random.Random(seed))
    a, b = random.Random(seed).sample(range(len(candidates)), 2)
    assert in_flight[picked] == min(loads[a], loads[b])
