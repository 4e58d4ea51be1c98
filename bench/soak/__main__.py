"""`python -m bench.soak` (`make bench-soak`): the whole local stack under hours-like traffic, for leaks.

The fault suite's stack (bench/chaos/harness.py: private Redis, Postgres, moto, scheduler, router
with Envoy, controller in local mode with its runtime pods, `meshserve dev`'s supervisor) with
200 models (the example sklearn model under 200 names) on 3 pods that cannot hold them all, so
copies are evicted and loaded again all the time. Traffic, for `--minutes` (default 10):
  - gRPC ModelInfer from several client processes at a fixed rate, Zipf popularity (bench/chaos/load.py);
  - REST infer from a thread pool at a fixed rate over the same models;
  - churn: every few seconds one model is deleted and a new one registered (apply / delete of an
    InferenceService), so registrations, deletions and their routes keep changing.
Every `--sample` seconds it records, for every process of the stack (this process's
descendants: infra, scheduler, router and its Envoy, controller, each pod's MLServer and puller),
its RSS and open file descriptors, plus Redis' key count and the Postgres rows of every table.

Prints errors by status (target 0), and per process the RSS after warm-up (the first quarter)
and at the end with the growth extrapolated to an hour (target: flat), fds likewise, and the
growth of Redis keys and Postgres rows per hour of such traffic. `--json FILE` keeps the samples.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench.chaos.harness import MODEL_FILE, ChaosConfig, ChaosStack, isvc, running
from bench.chaos.load import DIGIT, LoadGenerator, LoadSpec, p99, zipf_cum_weights
from meshserve.cli.devstack import EXAMPLE_BUCKET


@dataclass
class Sample:
    at: float
    rss: dict[str, int]            # process label -> resident bytes
    fds: dict[str, int]            # process label -> open file descriptors
    redis_keys: int
    rows: dict[str, int]           # table -> rows


@dataclass
class RestStats:
    sent: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


def _label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    words = [a.decode(errors="replace") for a in argv if a]
    text = " ".join(words)
    for needle, label in (
        ("redis-server", "redis"), ("postgres", "postgres"), ("moto", "s3"), ("meshserve.scheduler", "scheduler"),
        ("meshserve.router", "router"), ("envoy", "envoy"), ("meshserve.controller", "controller"),
        ("meshserve.puller", "puller"), ("mlserver", "mlserver"), ("bench.chaos.load", "load-client"),
        ("multiprocessing", "load-client"),
    ):
        if needle in text:
            return label
    return Path(words[0]).name if words else ""


def descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(c) for c in (task / "children").read_text().split()]
                out.extend(children)
                stack.extend(children)
        except OSError:
            continue
    return out


def process_sample() -> tuple[dict[str, int], dict[str, int]]:
    """RSS and fds summed per label (several pods' pullers: 'puller#2' etc. by pid order)."""
    rss: dict[str, int] = {}
    fds: dict[str, int] = {}
    seen: Counter[str] = Counter()
    for pid in sorted(descendants(os.getpid())):
        label = _label(pid)
        if not label or label == "load-client":
            continue
        seen[label] += 1
        key = label if seen[label] == 1 else f"{label}#{seen[label]}"
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            nfd = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration, ValueError):
            continue
        rss[key] = kb * 1024
        fds[key] = nfd
    return rss, fds


def store_sample(chaos: ChaosStack) -> tuple[int, dict[str, int]]:
    r = redis.Redis.from_url(chaos.stack.redis_url)
    try:
        keys = int(r.dbsize())
    finally:
        r.close()
    url = chaos.stack.database_url.replace("postgresql+psycopg://", "postgresql://")
    rows: dict[str, int] = {}
    with psycopg.connect(url) as conn:
        tables = [t for (t,) in conn.execute(
            "select tablename from pg_tables where schemaname = 'public' and tablename <> 'alembic_version'")]
        for table in tables:
            rows[table] = int(conn.execute(f'select count(*) from "{table}"').fetchone()[0])  # type: ignore[index]
    return keys, rows


def rest_load(base: str, names: list[str], rate: float, stop: threading.Event, stats: RestStats, seed: int) -> None:
    rng = random.Random(seed)
    weights = zipf_cum_weights(len(names), 1.0)
    body = {"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32", "data": DIGIT}]}
    period = 1.0 / rate
    lock = threading.Lock()
    with httpx.Client(base_url=base, timeout=15) as client, ThreadPoolExecutor(8) as pool:

        def one(name: str) -> None:
            started = time.perf_counter()
            try:
                code = str(client.post(f"/v2/models/{name}/infer", json=body).status_code)
            except httpx.HTTPError as err:
                code = type(err).__name__
            with lock:
                stats.codes[code] += 1
                stats.latencies.append(time.perf_counter() - started)

        next_at = time.monotonic()
        while not stop.is_set():
            name = rng.choices(names, cum_weights=weights)[0]
            stats.sent += 1
            pool.submit(one, name)
            next_at += period
            stop.wait(max(0.0, next_at - time.monotonic()))


def churn(chaos: ChaosStack, stop: threading.Event, every: float, log: list[str]) -> None:
    """Every `every` seconds: register a new model (not one the load asks for), load it with one
    request, and delete the oldest such model once three are alive."""
    alive: list[str] = []
    serial = 100_000
    while not stop.wait(every):
        new = f"soak-churn-{serial}"
        serial += 1
        try:
            chaos.stack.s3_client().put_object(Bucket=EXAMPLE_BUCKET, Key=f"chaos/{new}/model.joblib", Body=MODEL_FILE.read_bytes())
            chaos.apply([isvc(new, f"chaos/{new}/model.joblib")])
            alive.append(new)
            answer = chaos.answer(new, timeout=60)
            if len(alive) > 3:
                old = alive.pop(0)
                chaos.delete([isvc(old, f"chaos/{old}/model.joblib")])
            log.append(f"{time.time():.0f} +{new} ({answer})")
        except Exception as err:  # counted; the soak goes on
            log.append(f"{time.time():.0f} churn failed: {type(err).__name__}: {err}")


def per_hour(first: float, last: float, seconds: float) -> float:
    return (last - first) / seconds * 3600 if seconds > 0 else 0.0


def report(samples: list[Sample], grpc_records: list[Any], rest: RestStats, churned: list[str], minutes: float) -> int:
    warm = samples[max(0, len(samples) // 4)]
    end = samples[-1]
    span = end.at - warm.at
    codes = Counter(r.code for r in grpc_records)
    failures = sum(n for c, n in codes.items() if c != "OK") + sum(n for c, n in rest.codes.items() if c != "200")
    print(f"soak: {minutes:g} min, {len(samples)} samples; after warm-up (first quarter) {span:.0f} s measured")
    print(f"gRPC requests: {len(grpc_records)}  by status: {dict(codes)}  p99 {1000 * (p99([r.latency for r in grpc_records]) or 0):.1f} ms")
    print(f"REST requests: {rest.sent}  by status: {dict(rest.codes)}  p99 {1000 * (p99(rest.latencies) or 0):.1f} ms")
    print(f"churn: {len(churned)} changes, {sum('failed' in c for c in churned)} failed")
    print(f"errors: {failures} (target 0)")
    print()
    print(f"{'process':<14}{'RSS warm MiB':>13}{'RSS end MiB':>12}{'MiB/hour':>10}{'fds warm':>9}{'fds end':>8}")
    for label in sorted(end.rss):
        if label not in warm.rss:
            print(f"{label:<14}{'-':>13}{end.rss[label] / 2**20:>12.1f}{'(new)':>10}{'-':>9}{end.fds.get(label, 0):>8}")
            continue
        growth = per_hour(warm.rss[label], end.rss[label], span) / 2**20
        print(f"{label:<14}{warm.rss[label] / 2**20:>13.1f}{end.rss[label] / 2**20:>12.1f}{growth:>10.1f}"
              f"{warm.fds.get(label, 0):>9}{end.fds.get(label, 0):>8}")
    print()
    print(f"Redis keys: {warm.redis_keys} -> {end.redis_keys} ({per_hour(warm.redis_keys, end.redis_keys, span):+.0f}/hour)")
    for table in sorted(end.rows):
        before = warm.rows.get(table, 0)
        print(f"Postgres {table}: {before} -> {end.rows[table]} rows ({per_hour(before, end.rows[table], span):+.0f}/hour)")
    print("targets: 0 errors; RSS and fds flat after warm-up; Redis keys and rows bounded by the models, not by time")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="2 minutes, 60 models")
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--grpc-rate", type=float, default=60.0, help="gRPC requests per second (all client processes)")
    parser.add_argument("--rest-rate", type=float, default=20.0)
    parser.add_argument("--churn-every", type=float, default=5.0, help="seconds between a delete + register")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--json", type=Path, help="write the samples here")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.models = 2.0, 60
    root = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    config = ChaosConfig(root=root, models=args.models, pods=3, capacity_bytes=40 << 20)
    with running(config) as chaos:
        names = list(chaos.names)
        load = LoadGenerator(LoadSpec(address=chaos.stack.router_grpc, models=tuple(names), rate=args.grpc_rate)).start()
        stop = threading.Event()
        rest = RestStats()
        churned: list[str] = []
        threads = [
            threading.Thread(target=rest_load, args=(chaos.stack.router_rest, names, args.rest_rate, stop, rest, 7), daemon=True),
            threading.Thread(target=churn, args=(chaos, stop, args.churn_every, churned), daemon=True),
        ]
        for t in threads:
            t.start()
        samples: list[Sample] = []
        deadline = time.monotonic() + args.minutes * 60
        try:
            while True:
                rss, fds = process_sample()
                keys, rows = store_sample(chaos)
                samples.append(Sample(time.time(), rss, fds, keys, rows))
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(args.sample, max(0.0, deadline - time.monotonic())))
        finally:
            stop.set()
            records = load.stop()
            for t in threads:
                t.join(timeout=60)
        if args.json:
            args.json.write_text(json.dumps([s.__dict__ for s in samples]))
        return report(samples, records, rest, churned, args.minutes)


if __name__ == "__main__":
    sys.exit(main())
