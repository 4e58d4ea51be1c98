"""Fault cases of `make chaos` (bench/chaos) on a small stack: the state stores.

Redis killed with SIGKILL (`meshserve dev`'s supervisor restarts it, empty) and Redis
flushed: the scheduler rebuilds the live state from the pullers' reports and the Postgres
registry. Postgres stopped (SIGSTOP of the postmaster and its backends) for a short while.
Under steady load over 8 models on the controller's 2 pods; asserted: every model answers
again, nothing registered is lost, and no reservation or route leak is left (see
`bench.chaos.cases.missed_targets`). No clock thresholds: `make chaos` measures those.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos.cases import FAULTS, Timing, assert_recovered, run_case
from bench.chaos.harness import ChaosConfig, ChaosStack, running

pytestmark = pytest.mark.integration

TIMING = Timing(warmup_answers=20, after_answers=20, hold=3, sweep=180, settle=120)
DEADLINE = 60.0   # each request's: one that waits for its model's re-placement on a slow host still counts as served


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    with running(ChaosConfig(root=Path(tmp_path_factory.mktemp("chaos-state")), models=8, pods=2)) as stack:
        yield stack


@pytest.mark.parametrize("fault", ["redis-kill", "redis-flush"])
def test_redis_lost_under_load_is_rebuilt_with_every_copy_accounted_for(chaos: ChaosStack, fault: str) -> None:
    result = run_case(chaos, FAULTS[fault], rate=8, processes=2, timing=TIMING, request_timeout=DEADLINE)
    assert_recovered(chaos, result)
    assert result.copies_lost > 0   # the case did lose live state


def test_postgres_down_under_load_loses_no_registration(chaos: ChaosStack) -> None:
    result = run_case(chaos, FAULTS["postgres-down"], rate=8, processes=2, timing=TIMING, request_timeout=DEADLINE)
    assert_recovered(chaos, result)
    assert "backends" in " ".join(result.outcome.notes)
