"""Fault case of `make chaos` (bench/chaos) on a small stack: a scheduler replica killed with
SIGKILL while it drives a load (two replicas on the same Redis and Postgres; `meshserve dev`'s
supervisor restarts the killed one). Under steady load over 8 models on the controller's 2
pods; asserted: every model answers again, nothing registered is lost, and no reservation or
route leak is left (a load the dead replica started is settled or released by the pod's
heartbeat once older than any live load: the load timeout is shortened here so that happens
within the sweep). No clock thresholds: `make chaos` measures those.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos.cases import FAULTS, Timing, assert_recovered, run_case
from bench.chaos.harness import ChaosConfig, ChaosStack, running

pytestmark = pytest.mark.integration

TIMING = Timing(warmup_answers=20, after_answers=20, hold=3, sweep=180, settle=120)
DEADLINE = 60.0


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    config = ChaosConfig(
        root=Path(tmp_path_factory.mktemp("chaos-scheduler")), models=8, pods=2,
        scheduler_env={"MESHSERVE_SCHEDULER_LOAD_TIMEOUT_SECONDS": "20"},
    )
    with running(config) as stack:
        yield stack


@pytest.mark.timeout(900)   # a second scheduler replica is started in the case: more than the default on a busy host
def test_a_scheduler_killed_while_loading_leaves_no_reservation_and_every_model_answers_again(chaos: ChaosStack) -> None:
    result = run_case(chaos, FAULTS["scheduler-kill-loading"], rate=8, processes=2, timing=TIMING, request_timeout=DEADLINE)
    assert_recovered(chaos, result)
    assert "killed with loads in progress" in " ".join(result.outcome.notes)
