"""Copy scaling: how many copies of each model to add or remove, from request rates.

PURE: no I/O, no clock; the leader's scaling loop reads rates and copy counts, calls
`decide`/`plan_scaling`, and places or unloads copies itself (placement decides where).

Rules, checked in this order for one model (ModelMesh's figures where it has one):
1. Below `min_copies`: add the missing copies at once (`copies_missing`).
2. Above `max_copies` (when `max_copies > 0`): remove the excess at once.
3. Scale up by one when the rate per copy is above `threshold_rpm` (default 2,000
   requests/minute per copy, ModelMesh's `MM_SCALEUP_RPM_THRESHOLD`) and the model has
   fewer than `max_copies` copies (and fewer than `pods` when the pod count is given:
   never two copies on one pod). A model with no copy is never scaled up here: cold
   models are loaded on demand by the first request.
4. Scale down by one when the model has more than `max(min_copies, 1)` copies and the
   rate per copy *after* removing one would stay below `threshold_rpm x hysteresis`
   (default 0.5). The gap between the two thresholds stops a model flapping between
   n and n+1 copies. Scaling never removes the last copy: a model in use keeps one copy
   until memory pressure evicts it, and eviction honours `min_copies`.
5. Otherwise nothing.

Invariants (tested): the result stays within `[min_copies, max_copies]` whenever the
input does or can be moved there; an up-step never follows from a rate at or below the
threshold; a down-step never leaves fewer than `max(min_copies, 1)` copies; decisions
are deterministic and `plan_scaling` lists models in id order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_THRESHOLD_RPM = 2000.0
"""Requests per minute per copy above which a copy is added (ModelMesh default)."""

DEFAULT_HYSTERESIS = 0.5
"""Scale down only when the rate per copy after removal stays below threshold x this."""


@dataclass(frozen=True)
class ScalingPolicy:
    threshold_rpm: float = DEFAULT_THRESHOLD_RPM
    hysteresis: float = DEFAULT_HYSTERESIS

    def __post_init__(self) -> None:
        if self.threshold_rpm <= 0:
            raise ValueError("threshold_rpm must be positive")
        if not 0.0 <= self.hysteresis <= 1.0:
            raise ValueError("hysteresis must be within [0, 1]")


@dataclass(frozen=True)
class ModelLoad:
    """One model's demand and copies, as the scaling loop sees it."""

    model_id: str
    rate_per_minute: float          # requests per minute over the last window, all copies
    copies: int                     # loaded + loading copies
    min_copies: int = 0
    max_copies: int = 0             # 0 = no limit beyond the number of pods


@dataclass(frozen=True)
class CopyChange:
    """Add (`delta > 0`) or remove (`delta < 0`) copies of one model, and why."""

    model_id: str
    delta: int
    reason: str


def copies_missing(*, copies: int, min_copies: int) -> int:
    """How many copies must be added to reach `min_copies` (0 when enough)."""
    return max(0, min_copies - copies)


def decide(
    load: ModelLoad,
    *,
    policy: ScalingPolicy | None = None,
    pods: int | None = None,
) -> CopyChange:
    """The copy change for one model (`delta == 0` means leave it alone).

    Args:
        load: the model's rate, copies and bounds.
        policy: threshold and hysteresis; defaults if None.
        pods: compatible pods available, if known; caps scale-up (one copy per pod).
    """
    pol = policy if policy is not None else ScalingPolicy()
    mid, rate, n = load.model_id, load.rate_per_minute, load.copies
    missing = copies_missing(copies=n, min_copies=load.min_copies)
    if missing:
        return CopyChange(mid, missing, f"{n} copies, below minCopies {load.min_copies}")
    if load.max_copies > 0 and n > load.max_copies:
        return CopyChange(mid, load.max_copies - n, f"{n} copies, above maxCopies {load.max_copies}")
    cap = load.max_copies if load.max_copies > 0 else None
    if pods is not None:
        cap = pods if cap is None else min(cap, pods)
    if n >= 1 and rate / n > pol.threshold_rpm and (cap is None or n < cap):
        return CopyChange(
            mid,
            1,
            f"{rate / n:.0f} req/min per copy over {n} copies > {pol.threshold_rpm:.0f}",
        )
    floor = max(load.min_copies, 1)
    if n > floor and rate / (n - 1) < pol.threshold_rpm * pol.hysteresis:
        return CopyChange(
            mid,
            -1,
            f"{rate / (n - 1):.0f} req/min per copy on {n - 1} copies "
            f"< {pol.threshold_rpm * pol.hysteresis:.0f}",
        )
    return CopyChange(mid, 0, "within thresholds")


def plan_scaling(
    loads: Iterable[ModelLoad],
    *,
    policy: ScalingPolicy | None = None,
    pods: int | None = None,
) -> tuple[CopyChange, ...]:
    """Every non-zero copy change, in model id order."""
    changes = (decide(load, policy=policy, pods=pods) for load in loads)
    return tuple(sorted((c for c in changes if c.delta != 0), key=lambda c: c.model_id))
