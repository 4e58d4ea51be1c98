"""The model cache's decisions, without a file system: entry names, eviction plans, rehashing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserve.puller.model_cache import (
    RACY_NS,
    EntryState,
    Stamp,
    entry_key,
    needs_rehash,
    plan_eviction,
)

BASE = {"source": "s3:http://127.0.0.1:9000/bucket", "key": "m/model.bin", "version": '"abc"', "checksum": "md5:abc"}


def test_an_entry_key_is_stable_and_hex() -> None:
    assert entry_key(**BASE) == entry_key(**BASE)
    assert len(entry_key(**BASE)) == 64 and int(entry_key(**BASE), 16) >= 0


@pytest.mark.parametrize(
    "field, other",
    [
        pytest.param("source", "s3:http://127.0.0.1:9001/bucket", id="other-endpoint"),
        pytest.param("source", "s3:http://127.0.0.1:9000/bucket2", id="other-bucket"),
        pytest.param("key", "m/model2.bin", id="other-key"),
        pytest.param("version", '"abd"', id="other-version"),
        pytest.param("checksum", "", id="no-checksum"),
    ],
)
def test_every_part_of_the_identity_changes_the_key(field: str, other: str) -> None:
    assert entry_key(**{**BASE, field: other}) != entry_key(**BASE)


def test_fields_cannot_shift_into_each_other() -> None:
    # a naive "source/key" join would make these equal
    assert entry_key(**{**BASE, "source": "s3:e/b", "key": "c/d"}) != entry_key(**{**BASE, "source": "s3:e/b/c", "key": "d"})


def _e(key: str, size: int, used: int, links: int = 1) -> EntryState:
    return EntryState(key=key, size=size, last_used_ns=used, links=links)


def test_nothing_is_evicted_when_the_cache_fits() -> None:
    plan = plan_eviction([_e("a", 100, 1), _e("b", 100, 2)], max_bytes=200)
    assert plan.evict == () and plan.over_bytes == 0 and plan.reason == "fits"


def test_least_recently_used_unreferenced_entries_go_first_and_only_as_many_as_needed() -> None:
    entries = [_e("new", 100, 30), _e("old", 100, 10), _e("mid", 100, 20), _e("oldest-but-linked", 100, 0, links=2)]
    plan = plan_eviction(entries, max_bytes=250)
    assert plan.evict == ("old", "mid")
    assert (plan.total_bytes, plan.after_bytes, plan.over_bytes) == (400, 200, 0)


def test_room_is_made_for_the_incoming_object() -> None:
    plan = plan_eviction([_e("a", 100, 1), _e("b", 100, 2)], max_bytes=250, incoming=100)
    assert plan.evict == ("a",) and plan.after_bytes == 200


def test_referenced_entries_are_never_planned_even_when_the_cache_stays_over() -> None:
    plan = plan_eviction([_e("a", 100, 1, links=2), _e("b", 100, 2, links=3), _e("c", 10, 3)], max_bytes=50)
    assert plan.evict == ("c",)
    assert plan.over_bytes == 150 and plan.referenced_bytes == 200
    assert "referenced" in plan.reason


def test_ties_in_last_use_are_broken_by_key() -> None:
    assert plan_eviction([_e("b", 1, 5), _e("a", 1, 5)], max_bytes=1).evict == ("a",)


entry_lists = st.lists(
    st.builds(
        EntryState,
        key=st.text("abcdef0123456789", min_size=4, max_size=4),
        size=st.integers(0, 1000),
        last_used_ns=st.integers(0, 100),
        links=st.integers(1, 3),
    ),
    unique_by=lambda e: e.key,
    max_size=20,
)


@given(entries=entry_lists, max_bytes=st.integers(0, 5000), incoming=st.integers(0, 500))
def test_eviction_invariants(entries: list[EntryState], max_bytes: int, incoming: int) -> None:
    plan = plan_eviction(entries, max_bytes=max_bytes, incoming=incoming)
    by_key = {e.key: e for e in entries}
    evicted = [by_key[k] for k in plan.evict]
    assert not any(e.referenced for e in evicted)
    assert plan.after_bytes == sum(e.size for e in entries) + incoming - sum(e.size for e in evicted)
    kept_unreferenced = [e for e in entries if not e.referenced and e.key not in plan.evict]
    if plan.over_bytes:
        assert not kept_unreferenced  # over the bound only once every unreferenced entry is gone
    else:
        assert plan.after_bytes <= max_bytes
    # least recently used first: nothing kept unreferenced is older than something evicted
    if evicted and kept_unreferenced:
        assert max((e.last_used_ns, e.key) for e in evicted) < min((e.last_used_ns, e.key) for e in kept_unreferenced)
    # only as many as needed: without the last one the cache would not fit
    if evicted:
        assert plan.after_bytes + evicted[-1].size > max_bytes


LATER = 10_000_000_000  # a stamp taken 10 s after the mtime it records


def test_full_verification_rehashes_every_use() -> None:
    stamp = Stamp(10, 5, 7)
    assert needs_rehash(recorded=stamp, recorded_at_ns=LATER, current=stamp, policy="full")


@pytest.mark.parametrize(
    "current, expected",
    [
        pytest.param(Stamp(10, 5, 7), False, id="unchanged"),
        pytest.param(Stamp(10, 6, 7), True, id="written"),
        pytest.param(Stamp(11, 5, 7), True, id="resized"),
        pytest.param(Stamp(10, 5, 8), True, id="replaced"),
    ],
)
def test_stat_verification_rehashes_only_a_changed_file(current: Stamp, expected: bool) -> None:
    assert needs_rehash(recorded=Stamp(10, 5, 7), recorded_at_ns=LATER, current=current, policy="stat") is expected
    assert needs_rehash(recorded=None, recorded_at_ns=LATER, current=current, policy="stat")


def test_a_stamp_taken_right_after_the_write_proves_nothing() -> None:
    # a second write in the same timestamp tick would not move mtime: hash again
    stamp = Stamp(10, 5, 7)
    assert needs_rehash(recorded=stamp, recorded_at_ns=5 + RACY_NS - 1, current=stamp, policy="stat")
    assert not needs_rehash(recorded=stamp, recorded_at_ns=5 + RACY_NS, current=stamp, policy="stat")
