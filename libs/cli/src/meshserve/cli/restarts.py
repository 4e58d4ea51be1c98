"""When to restart a supervised process, and when to give up: a pure decision.

Owns the restart policy shared by `meshserve dev` (`supervise.py`, every process of the
stack) and the controller's local runtime pods (`runtimes_local.PodSupervisor`). Never
starts, stops or waits for anything: the caller passes the history, the time, how long the
process ran and a random number, and gets back what to do.

Rules (Kubernetes' restart policy `Always`, with CrashLoopBackOff):
* each exit is answered with a restart after a capped, jittered exponential back-off
  (`meshserve.common.backoff.backoff_delay`), whose attempt number counts the exits in a
  row that came after a run shorter than `stable_seconds`; a run that long resets it to 0;
* with `max_restarts` set, an exit that would need more than `max_restarts` restarts
  within `window_seconds` gives up instead (`GiveUp`); with `None` it never gives up, as a
  Deployment never does.

Invariants: the delay is never negative and never above `max_delay`; the history keeps
only restarts inside the window, so it stays bounded.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from meshserve.common.backoff import backoff_delay


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int | None = 5
    """Restarts allowed within `window_seconds`; one more exit gives up. None: never give up."""
    window_seconds: float = 60.0
    """The window `max_restarts` counts in."""
    base_delay: float = 0.5
    """Back-off ceiling of the first restart after a short run (halved by the jitter at worst)."""
    max_delay: float = 10.0
    """Back-off cap (Kubernetes caps at 300 s; a local stack wants its processes back sooner)."""
    stable_seconds: float = 60.0
    """A run at least this long resets the back-off to its first step."""


DEV_POLICY = RestartPolicy()
"""`meshserve dev`: 5 restarts within 60 s, then stop the stack and say why."""
POD_POLICY = RestartPolicy(max_restarts=None, base_delay=1.0, max_delay=30.0, stable_seconds=60.0)
"""Local runtime pods: never give up (a Deployment does not), back off to 30 s."""


@dataclass(frozen=True)
class RestartHistory:
    restarts: tuple[float, ...] = ()
    """When each restart inside the window was decided (monotonic seconds), oldest first."""
    streak: int = 0
    """Exits in a row that each came after a run shorter than `stable_seconds`."""

    @property
    def count(self) -> int:
        """Restarts inside the window (what the give-up rule counts)."""
        return len(self.restarts)


@dataclass(frozen=True)
class Restart:
    delay: float
    """Seconds to wait before starting the process again."""
    attempt: int
    """The back-off step used (0 = first restart after a stable run)."""


@dataclass(frozen=True)
class GiveUp:
    restarts: int
    """Restarts already made within the window."""
    window_seconds: float

    @property
    def reason(self) -> str:
        return f"{self.restarts} restarts within {self.window_seconds:.0f}s"


def decide_restart(
    history: RestartHistory, *, now: float, ran_for: float, policy: RestartPolicy, rand: float
) -> tuple[RestartHistory, Restart | GiveUp]:
    """The answer to one exit of a process that ran `ran_for` seconds, and the history after it.

    Args:
        history: what earlier exits left (start with `RestartHistory()`).
        now: monotonic seconds of the exit.
        ran_for: how long the process ran before it exited (0 if it never started).
        policy: the limits.
        rand: a number in [0, 1) for the jitter.
    """
    recent = tuple(t for t in history.restarts if now - t < policy.window_seconds)
    attempt = history.streak if ran_for < policy.stable_seconds else 0
    if policy.max_restarts is not None and len(recent) >= policy.max_restarts:
        return RestartHistory(restarts=recent, streak=attempt + 1), GiveUp(len(recent), policy.window_seconds)
    delay = backoff_delay(attempt=attempt, rand=rand, base=policy.base_delay, cap=policy.max_delay)
    return RestartHistory(restarts=(*recent, now), streak=attempt + 1), Restart(delay=delay, attempt=attempt)


def describe_exit(returncode: int | None) -> str:
    """`exited with code 3`, `killed by SIGKILL`, ... for a Popen return code."""
    if returncode is None:
        return "is gone"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"
