"""Fault cases of `make chaos` (bench/chaos) on a small stack: the router, the storage, the
model files and the disk.

The router killed (`meshserve dev`'s supervisor restarts it); the S3 endpoint hung (SIGSTOP)
while loads need it; a model whose every load fails (a corrupt file) registered during the
run; a pod whose model directory is a filesystem too small for any model (a 64 KiB tmpfs:
every load there fails with ENOSPC). Under steady load over 8 models on the controller's 2
pods; asserted: every model answers again, nothing registered is lost, no reservation or
route leak (`bench.chaos.cases.missed_targets`), and the failing model fails with a clear
status and a recorded reason.
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
    with running(ChaosConfig(root=Path(tmp_path_factory.mktemp("chaos-edges")), models=8, pods=2)) as stack:
        yield stack


def test_the_router_killed_under_load_comes_back_serving_every_model(chaos: ChaosStack) -> None:
    result = run_case(chaos, FAULTS["router-restart"], rate=8, processes=2, timing=TIMING, request_timeout=DEADLINE)
    assert_recovered(chaos, result)
    assert result.failed.keys() <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, dict(result.failed)


def test_storage_hung_during_loads_leaves_nothing_reserved(chaos: ChaosStack) -> None:
    result = run_case(chaos, FAULTS["storage-down"], rate=8, processes=2, timing=TIMING, request_timeout=DEADLINE)
    assert_recovered(chaos, result)


def test_a_model_whose_loads_fail_answers_with_a_clear_status_and_the_others_keep_serving(chaos: ChaosStack) -> None:
    result = run_case(chaos, FAULTS["corrupt-model"], rate=8, processes=2, timing=TIMING, request_timeout=DEADLINE)
    assert_recovered(chaos, result)
    codes = result.outcome.extra["corrupt_codes"]
    assert codes and "OK" not in codes, codes
    assert result.outcome.extra["corrupt_failure"].get("message"), result.outcome.extra["corrupt_failure"]
    assert result.failures == 0, dict(result.failed)   # the 8 good models never failed


def test_a_pod_whose_disk_is_full_fails_its_loads_and_every_model_still_answers(chaos: ChaosStack) -> None:
    result = run_case(chaos, FAULTS["disk-full"], rate=8, processes=2, timing=TIMING, request_timeout=DEADLINE)
    assert_recovered(chaos, result)
