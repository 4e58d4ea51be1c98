"""The restart decision (`meshserve.cli.restarts`) and the supervisor loop that applies it
(`meshserve.cli.supervise.Supervisor`) over fake units and a fake clock: no processes, no sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserve.cli.restarts import (
    DEV_POLICY,
    POD_POLICY,
    GiveUp,
    Restart,
    RestartHistory,
    RestartPolicy,
    decide_restart,
    describe_exit,
)
from meshserve.cli.supervise import CrashLoop, Supervisor, Unit


def crash(history: RestartHistory, *, now: float, ran_for: float = 0.0, policy: RestartPolicy = DEV_POLICY,
          rand: float = 1.0) -> tuple[RestartHistory, Restart | GiveUp]:
    return decide_restart(history, now=now, ran_for=ran_for, policy=policy, rand=rand)


def test_the_first_exit_restarts_after_the_first_back_off_step() -> None:
    history, decision = crash(RestartHistory(), now=100.0, ran_for=3600.0)
    assert decision == Restart(delay=DEV_POLICY.base_delay, attempt=0)
    assert history == RestartHistory(restarts=(100.0,), streak=1)


def test_quick_crashes_in_a_row_double_the_back_off_up_to_the_cap() -> None:
    policy = RestartPolicy(max_restarts=None, base_delay=1.0, max_delay=5.0)
    history, delays = RestartHistory(), []
    for i in range(6):
        history, decision = crash(history, now=float(i), policy=policy)
        assert isinstance(decision, Restart)
        delays.append(decision.delay)
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_a_stable_run_resets_the_back_off() -> None:
    history, _ = crash(RestartHistory(streak=4), now=0.0, ran_for=DEV_POLICY.stable_seconds)
    assert history.streak == 1
    _, decision = crash(RestartHistory(streak=4), now=0.0, ran_for=DEV_POLICY.stable_seconds)
    assert isinstance(decision, Restart) and decision.attempt == 0


def test_five_restarts_within_the_window_then_give_up() -> None:
    history = RestartHistory()
    for i in range(5):
        history, decision = crash(history, now=float(i))
        assert isinstance(decision, Restart), i
    history, decision = crash(history, now=5.0)
    assert decision == GiveUp(restarts=5, window_seconds=60.0)
    assert decision.reason == "5 restarts within 60s"


def test_restarts_older_than_the_window_do_not_count() -> None:
    history = RestartHistory(restarts=(0.0, 1.0, 2.0, 3.0, 4.0), streak=5)
    history, decision = crash(history, now=63.5)
    assert isinstance(decision, Restart)
    assert history.restarts == (4.0, 63.5)


def test_runtime_pods_never_give_up() -> None:
    history = RestartHistory()
    for i in range(50):
        history, decision = crash(history, now=float(i), policy=POD_POLICY)
        assert isinstance(decision, Restart)
        assert decision.delay <= POD_POLICY.max_delay


@given(
    streak=st.integers(min_value=0, max_value=10_000),
    ran_for=st.floats(min_value=0, max_value=1e6),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
    times=st.lists(st.floats(min_value=0, max_value=1000), max_size=20),
)
def test_delay_is_bounded_and_history_stays_inside_the_window(
    streak: int, ran_for: float, rand: float, times: list[float]
) -> None:
    now = 1000.0
    history, decision = decide_restart(
        RestartHistory(restarts=tuple(sorted(times)), streak=streak), now=now, ran_for=ran_for, policy=POD_POLICY, rand=rand
    )
    assert isinstance(decision, Restart)
    assert 0 <= decision.delay <= POD_POLICY.max_delay
    assert all(now - t < POD_POLICY.window_seconds for t in history.restarts)


@pytest.mark.parametrize(
    ("code", "text"),
    [pytest.param(-9, "killed by SIGKILL", id="sigkill"), pytest.param(3, "exited with code 3", id="exit"),
     pytest.param(None, "is gone", id="unknown")],
)
def test_exit_descriptions(code: int | None, text: str) -> None:
    assert describe_exit(code) == text


# -- the supervisor loop ---------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    """A process that dies when told and comes back when restarted (or fails to, `failing` times)."""

    def __init__(self, name: str, *, failing: int = 0) -> None:
        self.name, self.running, self.failing, self.starts = name, True, failing, 0

    def unit(self) -> Unit:
        return Unit(name=self.name, alive=lambda: self.running, restart=self.restart,
                    exit_reason=lambda: "killed by SIGKILL", tail=lambda: f"last words of {self.name}")

    def restart(self, note: str) -> None:
        self.starts += 1
        if self.failing:
            self.failing -= 1
            raise RuntimeError(f"{self.name} exited with code 1 while starting")
        self.running = True


def supervisor(*procs: FakeProcess, clock: FakeClock) -> tuple[Supervisor, list[str]]:
    said: list[str] = []
    return Supervisor([p.unit() for p in procs], notify=said.append, clock=clock, rand=lambda: 1.0), said


def test_a_dead_process_is_restarted_after_its_back_off_and_the_restart_is_logged() -> None:
    clock = FakeClock()
    redis, scheduler = FakeProcess("redis"), FakeProcess("scheduler")
    sup, said = supervisor(redis, scheduler, clock=clock)
    sup.poll()
    assert said == []
    redis.running = False
    sup.poll()
    assert said == ["redis killed by SIGKILL; restarting it in 0.5s (restart 1)"]
    clock.now += 0.4
    sup.poll()
    assert redis.starts == 0, "not before the back-off"
    clock.now += 0.1
    sup.poll()
    assert redis.starts == 1 and redis.running and scheduler.starts == 0
    assert said[-1] == "redis restarted (restart 1)"


def test_a_failed_restart_counts_as_a_crash_and_is_retried() -> None:
    clock = FakeClock()
    s3 = FakeProcess("s3", failing=1)
    sup, said = supervisor(s3, clock=clock)
    s3.running = False
    sup.poll()
    clock.now += 1
    sup.poll()
    assert "s3 did not come back (s3 exited with code 1 while starting); restarting it in 1.0s (restart 2)" in said
    clock.now += 1
    sup.poll()
    assert s3.running and s3.starts == 2


def test_a_process_that_keeps_crashing_makes_the_supervisor_give_up_naming_it_and_its_log() -> None:
    clock = FakeClock()
    router = FakeProcess("router")
    sup, _ = supervisor(router, clock=clock)
    for _ in range(5):
        router.running = False
        sup.poll()
        clock.now += 10
        sup.poll()
        assert router.running
    router.running = False
    with pytest.raises(CrashLoop) as caught:
        sup.poll()
    assert caught.value.name == "router"
    assert str(caught.value).startswith("router keeps crashing (5 restarts within 60s; last it killed by SIGKILL)")
    assert str(caught.value).endswith("last words of router")
