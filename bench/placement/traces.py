"""Seeded request traces: Zipf over a model population with log-normal sizes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MIB = 1 << 20


@dataclass(frozen=True)
class Phase:
    """Requests `[start, end)` are independent draws from `probs` (per model index)."""

    start: int
    end: int
    probs: npt.NDArray[np.float64]


@dataclass(frozen=True)
class Trace:
    name: str
    alpha: float
    requests: npt.NDArray[np.int64]     # model index per request
    phases: tuple[Phase, ...]           # the distributions the requests were drawn from


def model_sizes(*, n: int, seed: int, median_mib: float = 200.0, sigma: float = 1.0) -> npt.NDArray[np.int64]:
    """Log-normal model sizes in bytes (median `median_mib`, at least 1 MiB)."""
    rng = np.random.default_rng(seed)
    mib = rng.lognormal(mean=np.log(median_mib), sigma=sigma, size=n)
    return np.maximum(mib * MIB, MIB).astype(np.int64)


def _zipf_probs(n: int, alpha: float) -> npt.NDArray[np.float64]:
    p: npt.NDArray[np.float64] = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** alpha
    out: npt.NDArray[np.float64] = p / p.sum()
    return out


def _by_model(rank_probs: npt.NDArray[np.float64], perm: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The probability of each model index when rank r is model `perm[r]`."""
    out = np.empty_like(rank_probs)
    out[perm] = rank_probs
    return out


def zipf_trace(*, n: int, length: int, alpha: float, seed: int) -> Trace:
    """Independent requests; rank k has probability ~ 1/k^alpha; ranks map to random models."""
    rng = np.random.default_rng(seed)
    probs = _zipf_probs(n, alpha)
    ranks = rng.choice(n, size=length, p=probs)
    perm = rng.permutation(n)
    phase = Phase(0, length, _by_model(probs, perm))
    return Trace(f"zipf {alpha:.1f}", alpha, perm[ranks].astype(np.int64), (phase,))


def shifting_trace(*, n: int, length: int, alpha: float, phases: int, seed: int) -> Trace:
    """Zipf(alpha) whose popular set is re-drawn `phases` times (a new random rank->model map)."""
    rng = np.random.default_rng(seed)
    probs = _zipf_probs(n, alpha)
    out = np.empty(length, dtype=np.int64)
    bounds = np.linspace(0, length, phases + 1).astype(int)
    drawn: list[Phase] = []
    for lo, hi in itertools.pairwise(bounds):
        perm = rng.permutation(n)
        out[lo:hi] = perm[rng.choice(n, size=hi - lo, p=probs)]
        drawn.append(Phase(int(lo), int(hi), _by_model(probs, perm)))
    return Trace(f"shifting {alpha:.1f} x{phases}", alpha, out, tuple(drawn))
