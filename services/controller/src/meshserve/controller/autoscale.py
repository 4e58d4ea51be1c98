"""When to add or remove a runtime pod on model pressure (beyond upstream, whose only
autoscaler is the CPU/memory HPA of `hpa.py`).

Pure: `decide(samples, current=, policy=, now=, last_change=)` -> `Decision` (UP / DOWN /
HOLD and the pod count to go to). The samples are what the scheduler's
`GET /v1/runtimes/{name}/pressure` answered over time: how much loaded-model memory the
runtime's pods evicted per minute (over the sample's own window) and how long the least
recently used copy had gone unused.

The rules, in order:
1. **Bounds first.** Fewer pods than `min_pods`: UP to `min_pods` at once. More than
   `max_pods`: DOWN by one (a pod is drained before it stops, one at a time). Neither waits
   for a window or the cool-down: the bounds are the user's.
2. **Cool-down.** Within `cooldown_seconds` of the last change: HOLD.
3. Only samples that were measured entirely after the last change count (a sample's
   eviction rate covers `[at - window_seconds, at]`), so the effect of a change is judged on
   what happened after it.
4. **Churn must stay high** (UP by one, not beyond `max_pods`): every counted sample of the
   last `up_window_seconds` — and the latest one at or before its start, so the whole window
   is observed — shows at least `up_evicted_bytes_per_minute`, with no gap in coverage
   (each sample's window reaches back to the previous sample, and the newest reaches now).
5. **Capacity must stay unused** (DOWN by one, not below `min_pods`): the same over
   `down_window_seconds`, with no eviction at all and the LRU copy idle for at least
   `down_idle_seconds` (or no loaded copy).
6. Else HOLD, with the reason.

Hysteresis: UP needs evictions above a positive threshold, DOWN needs none, both for a whole
window of samples taken after the last change, and changes are `cooldown_seconds` apart; a
signal that swings between the two faster than a window never changes the count (the
property tests check this and the bounds).

`pick_victim(pods)` -> the pod a scale-down drains and removes where the caller may choose
(Kubernetes mode: the ReplicaSet deletes the pod marked with the lowest deletion cost; local
mode's supervisor always stops its newest process): a pod already draining first (a drain
started earlier whose removal did not happen: finish it rather than empty a second pod), else
the one holding the fewest bytes of copies (the least to re-place), then the fewest copies,
then the greatest id (a stable choice for equal pods).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PodLoad:
    """One pod of a runtime as the scheduler's pressure answer lists it."""

    pod_id: str
    allocated_bytes: int
    loaded_copies: int
    draining: bool


def pick_victim(pods: Sequence[PodLoad]) -> str | None:
    """The pod a scale-down removes (see the module docstring); None when there is none."""
    if not pods:
        return None
    best = min(pods, key=lambda p: (not p.draining, p.allocated_bytes, p.loaded_copies, _desc(p.pod_id)))
    return best.pod_id


def _desc(text: str) -> tuple[int, ...]:
    """A key that sorts strings in descending order."""
    return (*(-ord(c) for c in text), 1)


class Action(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


@dataclass(frozen=True)
class Sample:
    at: float
    """When it was measured (seconds, the caller's clock)."""
    window_seconds: float
    """What its eviction rate covers: `[at - window_seconds, at]`."""
    evicted_bytes_per_minute: float
    lru_copy_age_seconds: float | None
    """None: no loaded copy on the runtime's pods."""


@dataclass(frozen=True)
class Policy:
    min_pods: int
    max_pods: int
    up_evicted_bytes_per_minute: float
    up_window_seconds: float
    down_idle_seconds: float
    down_window_seconds: float
    cooldown_seconds: float

    def __post_init__(self) -> None:
        if not 1 <= self.min_pods <= self.max_pods:
            raise ValueError(f"need 1 <= min_pods <= max_pods, got {self.min_pods}..{self.max_pods}")
        if self.up_evicted_bytes_per_minute <= 0:
            raise ValueError("up_evicted_bytes_per_minute must be positive (else no eviction would be churn)")
        for name in ("up_window_seconds", "down_window_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.down_idle_seconds < 0 or self.cooldown_seconds < 0:
            raise ValueError("down_idle_seconds and cooldown_seconds may not be negative")


@dataclass(frozen=True)
class Decision:
    action: Action
    target: int
    reason: str


def _window(samples: Sequence[Sample], *, now: float, window: float, after: float | None) -> list[Sample] | None:
    """The samples that observe `[now - window, now]` entirely (the latest at or before its
    start, and every later one), or None when the counted samples do not cover it."""
    counted = sorted(
        (s for s in samples if s.at <= now and (after is None or s.at - s.window_seconds >= after)),
        key=lambda s: s.at,
    )
    start = now - window
    first = max((i for i, s in enumerate(counted) if s.at <= start), default=None)
    if first is None:
        return None
    chosen = counted[first:]
    for previous, sample in itertools.pairwise(chosen):
        if sample.at - sample.window_seconds > previous.at:
            return None   # a gap nothing observed
    if chosen[-1].at < now - chosen[-1].window_seconds:
        return None   # nothing observed lately: the readings stopped
    return chosen


def _churning(s: Sample, policy: Policy) -> bool:
    return s.evicted_bytes_per_minute >= policy.up_evicted_bytes_per_minute


def _idle(s: Sample, policy: Policy) -> bool:
    return s.evicted_bytes_per_minute <= 0 and (
        s.lru_copy_age_seconds is None or s.lru_copy_age_seconds >= policy.down_idle_seconds
    )


def decide(
    samples: Sequence[Sample], *, current: int, policy: Policy, now: float, last_change: float | None,
) -> Decision:
    """UP / DOWN / HOLD for a runtime now running `current` pods (see the module docstring)."""
    if current < policy.min_pods:
        return Decision(Action.UP, policy.min_pods, f"{current} pod(s), below the minimum {policy.min_pods}")
    if current > policy.max_pods:
        return Decision(Action.DOWN, current - 1, f"{current} pod(s), above the maximum {policy.max_pods}")
    if last_change is not None and now - last_change < policy.cooldown_seconds:
        return Decision(Action.HOLD, current, f"cooling down for {policy.cooldown_seconds - (now - last_change):.0f}s")
    if current < policy.max_pods:
        window = _window(samples, now=now, window=policy.up_window_seconds, after=last_change)
        if window is not None and all(_churning(s, policy) for s in window):
            rate = min(s.evicted_bytes_per_minute for s in window)
            return Decision(
                Action.UP, current + 1,
                f"evicting at least {rate:.0f} bytes/min for {policy.up_window_seconds:.0f}s "
                f"(threshold {policy.up_evicted_bytes_per_minute:.0f})",
            )
    if current > policy.min_pods:
        window = _window(samples, now=now, window=policy.down_window_seconds, after=last_change)
        if window is not None and all(_idle(s, policy) for s in window):
            return Decision(
                Action.DOWN, current - 1,
                f"no eviction and the least recently used copy idle >= {policy.down_idle_seconds:.0f}s "
                f"for {policy.down_window_seconds:.0f}s",
            )
    return Decision(Action.HOLD, current, "pressure within bounds")


def prune(samples: Sequence[Sample], *, now: float, policy: Policy) -> list[Sample]:
    """The samples `decide` can still use (what a caller needs to keep): those of the longer
    window, plus the latest one before it (the window's boundary sample)."""
    keep = max(policy.up_window_seconds, policy.down_window_seconds)
    ordered = sorted(samples, key=lambda s: s.at)
    older = [s for s in ordered if s.at < now - keep]
    return older[-1:] + [s for s in ordered if s.at >= now - keep]


@dataclass(frozen=True)
class RuntimePressure:
    """One answer of `GET /v1/runtimes/{name}/pressure`, with its pods."""

    window_seconds: float
    evicted_bytes_per_minute: float
    lru_copy_age_seconds: float | None
    pods: tuple[PodLoad, ...]
    pod_capacity_bytes: int
    """The largest model memory of one serving pod (0: none yet)."""

    @property
    def serving(self) -> int:
        return sum(1 for p in self.pods if not p.draining)


def parse_pressure(body: Mapping[str, Any], *, window_seconds: float) -> RuntimePressure:
    """The scheduler's pressure JSON (camelCase, as `scheduler.api.RuntimePressure` writes it)."""
    pods = [p for p in body.get("pods") or [] if isinstance(p, Mapping)]
    age = body.get("lruCopyAgeSeconds")
    return RuntimePressure(
        window_seconds=float(body.get("windowSeconds") or window_seconds),
        evicted_bytes_per_minute=float(body.get("evictedBytesPerMinute") or 0.0),
        lru_copy_age_seconds=None if age is None else float(age),
        pods=tuple(PodLoad(pod_id=str(p.get("id") or ""), allocated_bytes=int(p.get("allocatedBytes") or 0),
                           loaded_copies=int(p.get("loadedCopies") or 0), draining=bool(p.get("draining")))
                   for p in pods if p.get("id")),
        pod_capacity_bytes=max((int(p.get("capacityBytes") or 0) for p in pods if not p.get("draining")), default=0),
    )
