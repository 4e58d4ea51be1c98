"""`python -m bench.placement [--quick]`: hit ratio, decision latency, route publishing.

Everything is measured in this run against baselines measured in the same run, with
fixed seeds. Hit-ratio replays go through the real `place()`; scenarios run in two
worker processes (CI has two cores).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from bench.placement.latency import placement_latency, route_publish
from bench.placement.sim import (
    REQUEST_INTERVAL,
    Result,
    online_bound,
    pod_capacities,
    simulate_belady,
    simulate_place,
)
from bench.placement.traces import Trace, model_sizes, shifting_trace, zipf_trace
from meshserve.scheduler.models import EvictionPolicy, PlacementConfig

MODELS = 10_000
PODS = 8
SEED_SETS = {"default": (1, 2, 3), "held-out": (11, 12, 13)}
"""(model sizes, Zipf traces, shifting trace) seeds. Tune on `default`; a change counts only
if it also holds on `held-out` (same generators, seeds never used for tuning)."""
WARMUP = 0.10
PREVIOUS = "uw-previous"
"""Ablation: usage-weighted as it was before candidates and staleness (eviction_candidates=1,
stale_after_intervals=0): the pod where the fewest bytes must go, score order only."""
NO_SHIFT = "uw-no-shift"
"""Ablation: usage-weighted without shift detection (the scheduler's usage_reset_on_shift=false)."""
TARGET_OF_BELADY = 0.95
TARGET_POINTS = 5.0
TARGET_P99_US = 1000.0
TARGET_PUBLISH_MS = 50.0
PUBLISH_REPEATS = 9


@dataclass(frozen=True)
class Scenario:
    kind: str          # "zipf" or "shift"
    alpha: float
    fraction: float
    length: int
    seeds: tuple[int, int, int] = SEED_SETS["default"]


def _trace(s: Scenario) -> Trace:
    if s.kind == "shift":
        return shifting_trace(n=MODELS, length=s.length, alpha=s.alpha, phases=4, seed=s.seeds[2])
    return zipf_trace(n=MODELS, length=s.length, alpha=s.alpha, seed=s.seeds[1])


def _run(job: tuple[Scenario, str]) -> tuple[Scenario, str, Result, float]:
    scenario, method = job
    t0 = time.perf_counter()
    sizes = model_sizes(n=MODELS, seed=scenario.seeds[0])
    trace = _trace(scenario)
    caps = pod_capacities(sizes, fraction=scenario.fraction, pods=PODS)
    warm = int(len(trace.requests) * WARMUP)
    if method.startswith("belady"):
        result = simulate_belady(
            trace.requests, sizes, capacity=sum(caps), warmup=warm, size_aware=method == "belady-size"
        )
    elif method == PREVIOUS:
        result = simulate_place(
            trace.requests, sizes, capacities=caps, policy=EvictionPolicy.USAGE_WEIGHTED,
            warmup=warm, eviction_candidates=1, stale_after_intervals=0.0, shift=None,
        )
    elif method == NO_SHIFT:
        result = simulate_place(
            trace.requests, sizes, capacities=caps, policy=EvictionPolicy.USAGE_WEIGHTED, warmup=warm, shift=None
        )
    else:  # the default PlacementConfig for that policy
        result = simulate_place(trace.requests, sizes, capacities=caps, policy=EvictionPolicy(method), warmup=warm)
    return scenario, method, result, time.perf_counter() - t0


def _bound(s: Scenario) -> tuple[float, float]:
    """`sim.online_bound` for the scenario's trace (every policy replays the same one), and
    the standard deviation of a realised hit ratio around it (binomial, counted requests)."""
    sizes = model_sizes(n=MODELS, seed=s.seeds[0])
    caps = pod_capacities(sizes, fraction=s.fraction, pods=PODS)
    trace = _trace(s)
    warm = int(len(trace.requests) * WARMUP)
    bound = online_bound(trace.phases, sizes, capacity=sum(caps), warmup=warm)
    return bound, math.sqrt(bound * (1 - bound) / (len(trace.requests) - warm))


def _yes(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short traces and fewer calls (smoke run)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--seeds", choices=sorted(SEED_SETS), default="default",
        help="seed set for sizes and traces: judge policy changes on held-out too (not tuned on)",
    )
    parser.add_argument(
        "--ablation", action="store_true",
        help="also replay usage-weighted as it was before candidates and staleness, and without"
        " shift detection (20 more replays)",
    )
    args = parser.parse_args(argv)
    seeds = SEED_SETS[args.seeds]
    zipf_len, shift_len, calls = (30_000, 40_000, 500) if args.quick else (150_000, 200_000, 3_000)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    print(f"meshserve placement benchmark{' (--quick)' if args.quick else ''}: fixed seeds "
          f"({args.seeds}: sizes {seeds[0]}, Zipf {seeds[1]}, shifting {seeds[2]}); "
          f"host load average {load:.1f} on {os.cpu_count()} CPUs at start")
    half = PlacementConfig().usage_half_life_seconds
    print(f"\n## Hit ratio: {MODELS:,} models, log-normal sizes (median 200 MiB, sigma 1.0), {PODS} equal pods;"
          f"\n   Zipf traces of {zipf_len:,} requests, shifting trace {shift_len:,} (popular set re-drawn 4x);"
          f"\n   first {WARMUP:.0%} of each trace is warm-up (not counted). Every miss is a load."
          f"\n   usage-weighted: default config (half-life {half:.0f} s = {half / REQUEST_INTERVAL:,.0f} requests"
          f" at the simulated {1 / REQUEST_INTERVAL:.0f} req/s)")
    scenarios = [Scenario("zipf", a, f, zipf_len, seeds) for a in (0.8, 1.0, 1.2) for f in (0.05, 0.10, 0.20)]
    scenarios.append(Scenario("shift", 1.0, 0.10, shift_len, seeds))
    methods = ["usage-weighted", "lru", "belady", "belady-size"] + ([PREVIOUS, NO_SHIFT] if args.ablation else [])
    jobs = [(s, m) for s in scenarios for m in methods]
    results: dict[tuple[Scenario, str], Result] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        bounds = dict(zip(scenarios, pool.map(_bound, scenarios), strict=True))
        for scenario, method, result, _secs in pool.map(_run, jobs):
            results[(scenario, method)] = result
    head = (f"{'trace':<16}{'cache':>6} | {'LRU':>6} {'usage-w':>7} {'Belady':>7} {'B-Size':>7} {'online<=':>8} | "
            f"{'loads/1k: LRU':>13} {'u-w':>5} {'Belady':>6} | {'u-w/Belady':>10} {'u-w/B-Size':>10} "
            f"{'u-w - LRU':>9} | targets (>=95% Belady, >=+5 pts)")
    print("\n" + head + "\n" + "-" * len(head))
    all_ratio = all_points = True
    unreachable: list[str] = []
    for s in scenarios:
        lru, uw = results[(s, "lru")], results[(s, "usage-weighted")]
        bel, bsz = results[(s, "belady")], results[(s, "belady-size")]
        bound, sd = bounds[s]
        ceiling = bound + 3 * sd    # what a realised hit ratio could still reach by chance
        ratio = uw.hit_ratio / bel.hit_ratio
        points = 100 * (uw.hit_ratio - lru.hit_ratio)
        ok_ratio, ok_points = ratio >= TARGET_OF_BELADY, points >= TARGET_POINTS
        headroom = 100 * (bel.hit_ratio - lru.hit_ratio)
        all_ratio &= ok_ratio
        all_points &= ok_points
        name = f"zipf {s.alpha:.1f}" if s.kind == "zipf" else f"shifting {s.alpha:.1f}"
        notes = []
        if headroom < TARGET_POINTS:
            notes.append(f"Belady itself is only {headroom:+.1f}, B-Size {100 * (bsz.hit_ratio - lru.hit_ratio):+.1f}")
        if not ok_points and 100 * (ceiling - lru.hit_ratio) < TARGET_POINTS:
            notes.append(f"UNREACHABLE online: any online policy <= {100 * (bound - lru.hit_ratio):+.2f}"
                         f" (+{300 * sd:.2f} by chance at 3 sd)")
            unreachable.append(f"{name} at {s.fraction:.0%}: +{TARGET_POINTS:.0f} points")
        if not ok_ratio and ceiling < TARGET_OF_BELADY * bel.hit_ratio:
            notes.append(f"UNREACHABLE online: any online policy <= {bound / bel.hit_ratio:.1%} of Belady")
            unreachable.append(f"{name} at {s.fraction:.0%}: {TARGET_OF_BELADY:.0%} of Belady")
        print(f"{name:<16}{s.fraction:>6.0%} | {lru.hit_ratio:>6.3f} {uw.hit_ratio:>7.3f} {bel.hit_ratio:>7.3f} "
              f"{bsz.hit_ratio:>7.3f} {bound:>8.3f} | {lru.loads_per_1000:>13.0f} {uw.loads_per_1000:>5.0f} "
              f"{bel.loads_per_1000:>6.0f} | {ratio:>10.1%} {uw.hit_ratio / bsz.hit_ratio:>10.1%} "
              f"{points:>+9.1f} | {_yes(ok_ratio)} / {_yes(ok_points)}"
              + (f" ({'; '.join(notes)})" if notes else ""))
    print("Belady = farthest-next-use (classic MIN applied to sizes); B-Size = evict largest"
          " next-use-distance x size.\nBoth are offline reference heuristics on ONE cache of the same"
          " total bytes (no per-pod packing loss); with variable sizes the true optimum is NP-hard,"
          "\nso neither is a proven bound. Targets are checked against Belady (farthest-next-use)."
          "\nonline<= = a proven upper bound for ANY online policy (sim.online_bound): each request is an"
          " independent draw, so it hits\nwith the probability the cache holds, at most the fractional knapsack"
          " of the trace's true probabilities per byte\n(even told each phase's probabilities at its start);"
          " UNREACHABLE = below the target even 3 standard deviations of chance above the bound.")
    to_bsize = [results[(s, "usage-weighted")].hit_ratio / results[(s, "belady-size")].hit_ratio for s in scenarios]
    print(f"B-Size beats Belady on {sum(results[(s, 'belady-size')].hit_ratio > results[(s, 'belady')].hit_ratio for s in scenarios)}"
          f" of {len(scenarios)} traces: farthest-next-use is not the limit with variable sizes; usage-weighted reaches "
          f"{min(to_bsize):.1%}-{max(to_bsize):.1%} of B-Size.\nLRU = the same placement with policy lru and the"
          " default eviction_candidates (least recent victim among the candidate pods, about one LRU order across pods).")
    print(f"target usage-weighted >= {TARGET_OF_BELADY:.0%} of Belady on every trace: {_yes(all_ratio)}; "
          f">= +{TARGET_POINTS:.0f} points over LRU on every trace: {_yes(all_points)}")
    if unreachable:
        print(f"targets no online policy can meet (the bound is below them): {'; '.join(unreachable)}")

    cfg = PlacementConfig()
    if args.ablation:
        print(f"\nAblation: what the default config's parts add (eviction_candidates={cfg.eviction_candidates}: "
              f"cheapest victims among that many pods;\nstale_after_intervals={cfg.stale_after_intervals:g}: models "
              "unused for that many of their own expected gaps go first). 'previous' = 1 candidate, no staleness."
              "\n'no shift' = the default without shift detection (counts are never forgotten when the miss"
              " ratio jumps).")
        head = (f"{'trace':<16}{'cache':>6} | {'previous':>8} {'default':>8} {'gain':>6} | {'prev/Belady':>11} "
                f"{'prev - LRU':>10} | {'no shift':>8} {'/Belady':>8}")
        print(head + "\n" + "-" * len(head))
        for s in scenarios:
            lru, uw = results[(s, "lru")], results[(s, "usage-weighted")]
            prev, bel = results[(s, PREVIOUS)], results[(s, "belady")]
            name = f"zipf {s.alpha:.1f}" if s.kind == "zipf" else f"shifting {s.alpha:.1f}"
            print(f"{name:<16}{s.fraction:>6.0%} | {prev.hit_ratio:>8.3f} {uw.hit_ratio:>8.3f} "
                  f"{100 * (uw.hit_ratio - prev.hit_ratio):>+6.1f} | {prev.hit_ratio / bel.hit_ratio:>11.1%} "
                  f"{100 * (prev.hit_ratio - lru.hit_ratio):>+10.1f} | {results[(s, NO_SHIFT)].hit_ratio:>8.3f} "
                  f"{results[(s, NO_SHIFT)].hit_ratio / bel.hit_ratio:>8.1%}")

    print(f"\n## Decision latency: time per decision, 100,000 models over 1,000 pods, {calls:,} cold loads"
          "\n   (pods full to within <200 MiB, so many calls evict; 5% minCopies=1, 2% in flight,"
          " 1% loading; plans applied)")
    lat_ok = True
    for policy, candidates in (
        (EvictionPolicy.USAGE_WEIGHTED, cfg.eviction_candidates), (EvictionPolicy.LRU, cfg.eviction_candidates),
        (EvictionPolicy.USAGE_WEIGHTED, 1),
    ):
        lat = placement_latency(
            models=100_000, pods=1_000, calls=calls, policy=policy, seed=7, eviction_candidates=candidates
        )
        default = candidates == cfg.eviction_candidates
        if default:   # the 1-candidate run is a reference, not held to the target
            lat_ok &= lat.indexed.p99_us <= TARGET_P99_US
        print(f"{policy.value}, eviction_candidates={candidates}"
              f"{'' if default else ' (reference: the smallest deficit only)'}: "
              f"{lat.evicting:,} of {lat.calls:,} evicted, {lat.failed} failed; "
              f"same Plan from both paths on {lat.agreed:,} of {lat.calls:,} calls")
        for name, t in (("place_indexed()", lat.indexed), ("place() (ref.)", lat.reference),
                        ("index.update()", lat.update)):
            print(f"  {name:<16} p50 {t.p50_us / 1000:6.3f} ms  p99 {t.p99_us / 1000:6.3f} ms  "
                  f"max {t.max_us / 1000:6.2f} ms | thread CPU p50 {t.cpu_p50_us / 1000:6.3f} ms "
                  f"p99 {t.cpu_p99_us / 1000:6.3f} ms")
    print(f"target p99 <= {TARGET_P99_US / 1000:.0f} ms (place_indexed, wall clock, default config): {_yes(lat_ok)}")
    # what the service reads from Redis before such a decision (a real Redis, fresh process)
    from bench.placement.service_views import service_views

    n_pods, per_pod = (100, 100) if args.quick else (1_000, 100)
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as one:
            sv = one.submit(service_views, pods=n_pods, copies_per_pod=per_pod, repeats=9, seed=9).result()
    except Exception as err:  # no Redis to be had: say so
        print(f"the service's reads before a decision: not measured ({type(err).__name__}: {err})")
    else:
        print(f"the service's reads before a decision, {sv.pods:,} pods holding {sv.copies:,} copies ({sv.redis}), "
              f"median of 9:\n  baseline, every pod's view read for each decision (as the service did before "
              f"it kept views): {sv.read_all_ms:,.0f} ms"
              f"\n  views.ClusterViews: {sv.first_ms:,.0f} ms once, then {sv.unchanged_ms:.1f} ms per decision "
              f"when no pod changed, {sv.one_changed_ms:.1f} ms when one did (held / baseline = "
              f"{sv.one_changed_ms / sv.read_all_ms:.4f}); place_indexed() on them: {sv.decide_ms:.2f} ms")

    # the real path first: the copy scripts log the changes, the route hub computes the routes
    from bench.placement.latency import route_publish_end_to_end

    e2e = None
    print("\n## Route publishing: time to compute and publish 10,000 route changes "
          f"(100,000 models on 1,000 pods). Target <= {TARGET_PUBLISH_MS:.0f} ms.")
    if args.quick:
        print("(a) the service's path through Redis: skipped with --quick")
    else:
        try:
            # in a fresh process, as a scheduler process is: this one holds the latency
            # bench's 100,000-model cluster, which slows any allocation-heavy step
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as one:
                e2e = one.submit(
                    route_publish_end_to_end, models=100_000, pods=1_000, changes=10_000,
                    repeats=PUBLISH_REPEATS, seed=8,
                ).result()
        except Exception as err:  # no Redis to be had: say so, the in-process figure still stands
            print(f"(a) the service's path through Redis: not measured ({type(err).__name__}: {err})")
    if e2e is not None:
        print(f"(a) the service's path ({e2e.redis}; setup {e2e.setup_s:.0f} s, untimed). The route hub's table "
              f"is loaded from Redis ({e2e.load_s:.1f} s). Each repeat changes the routes of {e2e.changes:,} models "
              f"through the real copy scripts, which log {e2e.entries:,} entries as they change the copies "
              f"(pipelined: {e2e.scripts_s:.2f} s, untimed: the placement's own work). Timed, median of {PUBLISH_REPEATS}: "
              f"routehub.catch_up, the hub's step: read the entries -> apply them to the table (the routes "
              f"computed) -> encode the RouteUpdate every WatchRoutes stream is handed "
              f"({e2e.wire_bytes / 1e6:.2f} MB):"
              f"\n  compute + publish  {e2e.median_ms:6.1f} ms (max {e2e.max_ms:.1f})"
              f"\n  of which, timed apart on a copy of the table: read {e2e.read_ms:.1f} ms, apply {e2e.apply_ms:.1f} ms, "
              f"encode {e2e.encode_ms:.1f} ms"
              f"\n  (a router connecting gets a snapshot of all 100,000 routes from the table: {e2e.snapshot_ms:,.0f} ms; "
              f"redis-py {'with' if e2e.hiredis else 'without'} hiredis)")
    # the same changes built in Python from an in-memory table, against the protobuf API
    pub = route_publish(models=100_000, pods=1_000, changes=10_000, batch=10_000, repeats=PUBLISH_REPEATS, seed=8)
    print(f"(b) reference, in process, no Redis: compute the changed routes from an in-memory table and build "
          f"the {pub.messages} RouteUpdate ({pub.wire_bytes / 1e6:.2f} MB), median of {PUBLISH_REPEATS}, identical bytes:"
          f"\n  routes.encode_route_update:        {pub.median_ms:5.1f} ms "
          f"(of which computing the routes {pub.compute_median_ms:.1f} ms; max {pub.max_ms:.1f} ms)"
          f"\n  protobuf API per route (baseline): {pub.baseline_median_ms:5.1f} ms; "
          f"encode / baseline = {pub.median_ms / pub.baseline_median_ms:.2f}")
    if e2e is not None:
        print(f"  the service's compute + publish (a) / protobuf API baseline (b) = "
              f"{e2e.median_ms / pub.baseline_median_ms:.2f}")
        print(f"target <= {TARGET_PUBLISH_MS:.0f} ms on (a), compute + publish: {_yes(e2e.median_ms <= TARGET_PUBLISH_MS)}")
    else:
        print(f"target <= {TARGET_PUBLISH_MS:.0f} ms: not judged ((a) was not measured)")
    print(f"\ntotal bench time {time.perf_counter() - started:.0f} s; "
          f"host load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
