"""Fault cases of `make chaos` (bench/chaos) on a small stack: runtime pods killed or hung.

The controller's pods (local mode, 2 pods of the MLServer runtime), 8 models, steady load
from 2 client processes; each fault under that load. Asserted, as the issue's targets that do
not depend on the clock: only requests in flight at the kill fail; every model answers again
(asked until it does, with a deadline); nothing registered is lost; after the case no
reservation or route leak (Redis allocations = what each model server holds, nothing
reserved beyond the copies, no load left in progress, routes = loaded copies at the pods'
current addresses). How fast it recovers is measured by `make chaos`, not asserted here.
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
    with running(ChaosConfig(root=Path(tmp_path_factory.mktemp("chaos-pods")), models=8, pods=2)) as stack:
        yield stack


@pytest.mark.parametrize("fault", ["kill-mlserver", "kill-puller", "kill-pod"])
def test_a_killed_pod_fails_only_the_requests_in_flight_and_every_model_answers_again(chaos: ChaosStack, fault: str) -> None:
    before = chaos.pod_status()
    result = run_case(chaos, FAULTS[fault], rate=8, processes=2, timing=TIMING, request_timeout=DEADLINE)
    assert_recovered(chaos, result)
    victim = result.outcome.victim
    assert victim is not None and chaos.pod_status()[victim]["restarts"] == before[victim]["restarts"] + 1
    assert result.copies_replaced <= result.copies_lost


def test_a_hung_pod_resumed_leaves_nothing_lost_or_leaked(chaos: ChaosStack) -> None:
    result = run_case(chaos, FAULTS["sigstop-pod"], rate=8, processes=2, timing=TIMING, request_timeout=DEADLINE)
    assert_recovered(chaos, result)
    assert result.failed.keys() <= {"DEADLINE_EXCEEDED", "UNAVAILABLE"}, dict(result.failed)
