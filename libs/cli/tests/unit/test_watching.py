"""What `get models -w` prints between two snapshots, and the progress lines of a load
(`meshserve.cli.watching`): pure functions over admin-API-shaped dicts, no stack."""

from __future__ import annotations

import io
import threading
from typing import Any

from meshserve.cli.watching import (
    GONE,
    Progress,
    Unreachable,
    describe_progress,
    follow_progress,
    model_changes,
    model_progress,
    vmodel_progress,
    watch_models,
)


def model(mid: str, state: str = "Standby", copies: list[tuple[str, str]] = (), requests: float = 0.0,  # type: ignore[assignment]
          failure: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": mid, "format": "sklearn", "state": state, "requests": requests, "lastFailure": failure,
            "copies": [{"pod": p, "state": s} for p, s in copies],
            "sizes": {"declared": None, "predicted": 2 << 20, "measured": None}}


def snap(*models: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in models}


def test_the_first_snapshot_is_the_whole_table() -> None:
    rows = model_changes(None, snap(model("a"), model("b", "Loaded", [("pod-0", "loaded")])))
    assert [r[0] for r in rows] == ["a", "b"]
    assert rows[1][2:4] == ["Loaded", "1"] and rows[1][-1] == "pod-0:loaded"


def test_a_state_change_a_new_copy_and_a_registration_are_rows_a_request_count_is_not() -> None:
    before = snap(model("a"), model("b", "Loading", [("pod-0", "loading")]), model("c", requests=1))
    after = snap(model("a"), model("b", "Loaded", [("pod-0", "loaded")]), model("c", requests=9), model("d"))
    rows = model_changes(before, after)
    assert [(r[0], r[2]) for r in rows] == [("b", "Loaded"), ("d", "Standby")]


def test_an_unregistered_model_is_a_row_saying_so() -> None:
    rows = model_changes(snap(model("a", "Loaded", [("pod-0", "loaded")])), snap())
    assert [(r[0], r[2], r[3]) for r in rows] == [("a", GONE, "0")]


def test_a_new_failure_of_a_failed_model_is_a_change() -> None:
    first = model("a", "FailedToLoad", failure={"reason": "ModelLoadFailed", "time": "t1"})
    again = model("a", "FailedToLoad", failure={"reason": "ModelLoadFailed", "time": "t2"})
    assert model_changes(snap(first), snap(again)) and not model_changes(snap(first), snap(first))


def test_the_watch_prints_changes_until_stopped_and_survives_a_lost_admin_api() -> None:
    answers: list[Any] = [[model("a")], Unreachable("down"), [model("a", "Loading", [("pod-0", "loading")])],
                          [model("a", "Loaded", [("pod-0", "loaded")])]]
    stop = threading.Event()

    def fetch() -> list[dict[str, Any]]:
        answer = answers.pop(0)
        if not answers:
            stop.set()   # the last answer: the loop ends after printing it
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    out, err = io.StringIO(), io.StringIO()
    assert watch_models(fetch, out=out, err=err, stop=stop, interval=0) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["MODEL", "FORMAT", "STATE"]
    assert [line.split()[2] for line in lines[1:]] == ["Standby", "Loading", "Loaded"]
    assert err.getvalue().splitlines() == ["warning: down; still watching", "warning: the admin API answers again"]


def test_a_watch_that_cannot_start_is_one_error_line() -> None:
    def fetch() -> list[dict[str, Any]]:
        raise Unreachable("cannot reach the scheduler admin API at http://x")

    err = io.StringIO()
    assert watch_models(fetch, out=io.StringIO(), err=err, stop=threading.Event(), interval=0) == 1
    assert err.getvalue() == "error: cannot reach the scheduler admin API at http://x\n"


def test_progress_of_a_model() -> None:
    assert model_progress(None).state == "Pending"
    assert model_progress(model("a", "Loading", [("pod-1", "loading")])) == Progress("Loading", "on pod-1")
    assert model_progress(model("a", "Loaded", [("pod-1", "loaded"), ("pod-0", "loaded")])) == Progress(
        "Loaded", "on pod-0, pod-1")
    failed = model_progress(model("a", "FailedToLoad", failure={"reason": "ModelLoadFailed", "message": "no file"}))
    assert failed == Progress("FailedToLoad", "ModelLoadFailed: no file") and failed.done


def test_progress_of_an_inference_service() -> None:
    assert vmodel_progress(None).state == "Pending"
    assert vmodel_progress({"activeState": "Loaded", "targetState": None, "activeModelId": "m"}) == Progress(
        "Loaded", "model m")
    assert vmodel_progress({"activeState": "Loaded", "targetState": "Loading", "targetModelId": "m2"}) == Progress(
        "Loading", "model m2")
    assert vmodel_progress({"activeState": "Loaded", "targetState": "FailedToLoad",
                            "targetErrors": ["bad uri"]}) == Progress("FailedToLoad", "bad uri")


def test_progress_lines() -> None:
    assert describe_progress("m", Progress("Loaded", "on pod-0"), elapsed=1.25) == "m: Loaded on pod-0 (1.2s)"
    assert describe_progress("m", Progress("FailedToLoad", "why"), elapsed=0) == "m: FailedToLoad: why (0.0s)"


def test_follow_shows_each_state_once_with_the_elapsed_time() -> None:
    states = [Progress("Standby"), Progress("Loading", "on pod-0"), Progress("Loading", "on pod-0"),
              Progress("Loaded", "on pod-0")]
    ticks = iter([0.0, 0.5, 1.0, 1.5, 2.0])   # the start, then one read per look
    out = io.StringIO()
    last = follow_progress("m", lambda: states.pop(0), out=out, stop=threading.Event(), interval=0,
                           clock=lambda: next(ticks))
    assert last.state == "Loaded"
    assert out.getvalue().splitlines() == ["m: Standby (0.5s)", "m: Loading on pod-0 (1.0s)", "m: Loaded on pod-0 (2.0s)"]


def test_follow_reads_once_more_after_the_callers_call_returned() -> None:
    states = [Progress("Loading", "on pod-0"), Progress("Loaded", "on pod-0")]
    calls = iter([False, True, True])
    out = io.StringIO()
    last = follow_progress("m", lambda: states.pop(0) if len(states) > 1 else states[0], out=out,
                           stop=threading.Event(), interval=0, finished=lambda: next(calls))
    assert last.state == "Loaded" and out.getvalue().splitlines()[-1].startswith("m: Loaded")
