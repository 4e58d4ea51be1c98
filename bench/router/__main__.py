"""`python -m bench.router`: the router's added cost, measured against direct calls in one run.

Targets, each called directly and through router processes of both data paths (the Python
router alone, `MESHSERVE_ROUTER_DATA_PATH=python`, and Envoy in front of it, `envoy`), from
this one client process with the same payloads (raw-bytes grpc.aio calls, N tasks, fixed
duration):
  - an MLServer runtime pod (iris model) from the local stack, via routers following the
    stack's scheduler;
  - a fixed-reply grpc.aio server (no model work), via routers whose scheduler is a
    one-route fake: this isolates the router's own cost.
Payloads: a small tensor (2x4 FP32) and a 1 MiB tensor (65536x4 FP32) over gRPC, the small
one over REST too (JSON, `POST /v2/models/<m>/infer`, aiohttp client). Concurrency 1 and 32.
Besides req/s and latency, the router's CPU per request: user + system time of the router
process and its children (Envoy) over the run, from /proc. Prints a table and the ratios.

`--pin`: the client and the model servers on CPU 0, each router (and its Envoy) on CPU 1, so
the ratio shows the router's own cost rather than three processes fighting over two cores.

`floor` (bench/router/floor.py): a bare Envoy with one static route to the target and no
Lua, with the router Envoy's binary, worker count and listener settings: how much of the
gap is Envoy itself on this host. Rows of one run share the host's load; compare rows of
the same run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import uvloop

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig
from meshserve.cli.procs import free_port
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2

from . import floor

ROOT = Path(__file__).resolve().parents[2]
INFER = "/inference.GRPCInferenceService/ModelInfer"
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def payload(model: str, rows: int) -> bytes:
    data = np.tile(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32), (rows, 1))
    request = v2.ModelInferRequest(model_name=model)
    request.inputs.add(name="predict", datatype="FP32", shape=list(data.shape))
    request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


async def run(address: str, body: bytes, concurrency: int, seconds: float) -> tuple[float, float, float, int]:
    async with grpc.aio.insecure_channel(address, options=OPTIONS) as channel:
        call = channel.unary_unary(INFER)
        for _ in range(3):
            await call(body, timeout=120)  # warm: connection, cold load
        latencies: list[float] = []
        errors = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await call(body, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return len(lat) / elapsed, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), errors


def rest_payload(rows: int) -> bytes:
    data = [5.1, 3.5, 1.4, 0.2] * rows
    return f'{{"inputs":[{{"name":"predict","datatype":"FP32","shape":[{rows},4],"data":{data}}}]}}'.encode()


async def run_rest(base: str, model: str, body: bytes, concurrency: int, seconds: float) -> tuple[float, float, float, int]:
    url = f"{base}/v2/models/{model}/infer"
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers={"content-type": "application/json"}) as session:
        for _ in range(3):
            async with session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=120)) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.text())[:200]}")
        latencies: list[float] = []
        errors = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return len(lat) / elapsed, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), errors


def measure(case: tuple[str, str, int, int, float], grpc_address: str, rest_base: str) -> tuple[float, float, float, int]:
    proto, model, rows, concurrency, seconds = case
    if proto == "grpc":
        return asyncio.run(run(grpc_address, payload(model, rows), concurrency, seconds))
    return asyncio.run(run_rest(rest_base, model, rest_payload(rows), concurrency, seconds))


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of `pid` and of its descendants."""
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                os.sched_setaffinity(int(task.name), cpus)
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue


def tree_cpu_seconds(pid: int, *, own: bool = False) -> float:
    """utime + stime of `pid` and its children (Envoy), from /proc; `own`: of `pid` alone."""
    total, stack = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            if own:
                break
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


def wait_grpc(address: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=1)
            return
        except grpc.FutureTimeoutError:
            continue
    raise TimeoutError(address)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--paths", default="python,envoy,floor",
                        help="router data paths to measure; floor: a bare Envoy with one static route (bench/router/floor.py)")
    parser.add_argument("--profile", action="store_true", help="also profile the Python fake-target router (cProfile)")
    parser.add_argument("--pin", action="store_true", help="client and servers on CPU 0, each router on CPU 1")
    parser.add_argument("--no-rest", action="store_true", help="gRPC rows only")
    parser.add_argument("--targets", default="mlserver,fixed-reply", help="targets to measure")
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    root = Path(tempfile.mkdtemp(prefix="bench-router-"))
    stack = Stack(StackConfig.from_env(root, pods=1, isolate=True))
    procs: list[subprocess.Popen[bytes]] = []
    profile_path = root / "router.prof"
    try:
        stack.start()
        stack.upload_examples(ROOT / "examples" / "models")
        stack.register("bench-iris", storage_uri=f"s3://{EXAMPLE_BUCKET}/sklearn/iris-logreg.joblib")

        model_port, sched_port, fake_rest_port = free_port(), free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        fake = subprocess.Popen(
            [sys.executable, "-m", "bench.router.fake", str(model_port), str(sched_port), str(fake_rest_port)], env=env, cwd=ROOT
        )
        procs.append(fake)
        wait_grpc(f"127.0.0.1:{model_port}")
        if args.pin:
            os.sched_setaffinity(0, {0})
            pin_tree(fake.pid, {0})
            pin_tree(stack.pods[0].mlserver.popen.pid, {0})  # type: ignore[attr-defined]
        directs = {
            "mlserver": (stack.pods[0].mlserver_grpc, stack.pods[0].mlserver_rest, "bench-iris"),
            "fixed-reply": (f"127.0.0.1:{model_port}", f"http://127.0.0.1:{fake_rest_port}", "fake"),
        }
        routers: dict[tuple[str, str], tuple[str, str, subprocess.Popen[bytes]]] = {}  # (target, path) -> grpc, rest, process
        for path in paths:
            for target, scheduler in (("mlserver", stack.scheduler_grpc), ("fixed-reply", f"127.0.0.1:{sched_port}")):
                port, rest_port = free_port(), free_port()
                if path == "floor":  # a bare Envoy, one static route to the target
                    direct, direct_rest, _ = directs[target]
                    proc = floor.start(
                        root / f"floor-{target}", grpc_port=port, rest_port=rest_port, grpc_target=direct,
                        rest_target=direct_rest, prefix=["taskset", "-c", "1"] if args.pin else [],
                    )  # fmt: skip
                    procs.append(proc)
                    routers[(target, path)] = (f"127.0.0.1:{port}", f"http://127.0.0.1:{rest_port}", proc)
                    continue
                router_env = {
                    **env,
                    "MESHSERVE_ROUTER_DATA_PATH": path,
                    "MESHSERVE_ROUTER_ROUTER_ID": f"bench-{target}-{path}",
                    "MESHSERVE_ROUTER_GRPC_ADDRESS": f"127.0.0.1:{port}",
                    "MESHSERVE_ROUTER_REST_HOST": "127.0.0.1",
                    "MESHSERVE_ROUTER_REST_PORT": str(rest_port),
                    "MESHSERVE_ROUTER_SCHEDULER_ADDRESS": scheduler,
                    "MESHSERVE_ROUTER_METRICS_PORT": "0",
                    "MESHSERVE_ROUTER_LOG_LEVEL": "WARNING",
                }
                argv = [sys.executable, "-m", "meshserve.router"]
                if args.profile and target == "fixed-reply" and path == "python":
                    argv = [sys.executable, "-m", "cProfile", "-o", str(profile_path), "-m", "meshserve.router"]
                if args.pin:  # taskset execs the router: same pid, and its Envoy inherits the CPU
                    argv = ["taskset", "-c", "1", *argv]
                proc = subprocess.Popen(argv, env=router_env, cwd=ROOT)
                procs.append(proc)
                routers[(target, path)] = (f"127.0.0.1:{port}", f"http://127.0.0.1:{rest_port}", proc)
        for address, _, _ in routers.values():
            wait_grpc(address)
        with grpc.insecure_channel(stack.router_grpc, options=OPTIONS) as channel:  # cold load through the router
            channel.unary_unary(INFER)(payload("bench-iris", 2), timeout=120)

        cases = [("grpc", "small", 2), ("grpc", "1MiB", 65536)] + ([] if args.no_rest else [("rest", "small", 2)])
        rows = []
        uvloop.install()
        for target, (direct, direct_rest, model) in directs.items():
            if target not in args.targets.split(","):
                continue
            for proto, size, nrows in cases:
                for concurrency in (1, 32):
                    case = (proto, model, nrows, concurrency, args.seconds)
                    d = measure(case, direct, direct_rest)
                    for path in paths:
                        address, rest_base, proc = routers[(target, path)]
                        cpu, own = tree_cpu_seconds(proc.pid), tree_cpu_seconds(proc.pid, own=True)
                        r = measure(case, address, rest_base)
                        cpu, own = tree_cpu_seconds(proc.pid) - cpu, tree_cpu_seconds(proc.pid, own=True) - own
                        # the run's warm-up calls count too: 3 + every timed request
                        calls = max(1, r[0] * args.seconds + 3)
                        # envoy: the Python router's own share (access log -> metrics, control plane)
                        python_ms = own / calls * 1000 if path == "envoy" else None
                        rows.append((target, f"{proto}/{size}", concurrency, path, d, r, cpu / calls * 1000, python_ms))
                    print(f"  done {target} {proto} {size} c={concurrency}", file=sys.stderr)

        header = (
            f"{'target':<12}{'tensor':<11}{'conc':>5} {'path':<7}| {'direct rps':>10}{'p50':>8}{'p99':>8} | "
            f"{'router rps':>10}{'p50':>8}{'p99':>8} | {'rps ratio':>9}{'+p50 ms':>9}{'+p99 ms':>9}{'cpu ms/req':>11}{'(python)':>9}"
        )
        print(header)
        print("-" * len(header))
        for target, size, concurrency, path, d, r, cpu_ms, python_ms in rows:
            print(
                f"{target:<12}{size:<11}{concurrency:>5} {path:<7}| {d[0]:>10.0f}{d[1]:>8.2f}{d[2]:>8.2f} | "
                f"{r[0]:>10.0f}{r[1]:>8.2f}{r[2]:>8.2f} | {r[0] / d[0]:>9.2f}{r[1] - d[1]:>9.2f}{r[2] - d[2]:>9.2f}{cpu_ms:>11.3f}"
                + (f"{python_ms:>9.3f}" if python_ms is not None else " " * 9)
                + (f"  errors {d[3]}/{r[3]}" if d[3] or r[3] else "")
            )
        print("targets: throughput >= 0.9x direct at c=32, added p50 <= 0.3 ms at c=1, router CPU <= 0.1 ms per request")
        where = "client and servers on CPU 0, router on CPU 1" if args.pin else "2 CPUs shared by client, router and server"
        print(f"(latencies in ms; {where}; cpu = router process + its Envoy; floor = a bare Envoy, one static route)")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=15)
        stack.stop()
    if args.profile and profile_path.exists():
        stats = pstats.Stats(str(profile_path))
        stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
