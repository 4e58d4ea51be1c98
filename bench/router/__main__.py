"""`python -m bench.router`: the router's added cost, measured against direct calls in one run.

Targets, each called directly and through a router process, from this one client
process with the same payloads (raw-bytes grpc.aio calls, N tasks, fixed duration):
  - an MLServer runtime pod (iris model) from the local stack, via the stack's router;
  - a fixed-reply grpc.aio server (no model work), via a second router whose scheduler
    is a one-route fake: this isolates the router's own cost.
Payloads: a small tensor (2x4 FP32) and a 1 MiB tensor (65536x4 FP32). Concurrency 1 and 32.
Bounded to well under 3 minutes. Prints a table and the router/direct ratios.
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

import grpc
import numpy as np
import uvloop

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig
from meshserve.cli.procs import free_port
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2

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


def wait_grpc(address: str, timeout: float = 30) -> None:
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
    parser.add_argument("--profile", action="store_true", help="also profile the fake-target router (cProfile)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-router-"))
    stack = Stack(StackConfig.from_env(root, pods=1, isolate=True))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stack.start()
        stack.upload_examples(ROOT / "examples" / "models")
        stack.register("bench-iris", storage_uri=f"s3://{EXAMPLE_BUCKET}/sklearn/iris-logreg.joblib")

        model_port, sched_port, router_port, rest_port = free_port(), free_port(), free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.router.fake", str(model_port), str(sched_port)], env=env, cwd=ROOT))
        router_env = {
            **env,
            "MESHSERVE_ROUTER_GRPC_ADDRESS": f"127.0.0.1:{router_port}",
            "MESHSERVE_ROUTER_REST_HOST": "127.0.0.1",
            "MESHSERVE_ROUTER_REST_PORT": str(rest_port),
            "MESHSERVE_ROUTER_SCHEDULER_ADDRESS": f"127.0.0.1:{sched_port}",
            "MESHSERVE_ROUTER_METRICS_PORT": "0",
            "MESHSERVE_ROUTER_LOG_LEVEL": "WARNING",
        }
        profile_path = root / "router.prof"
        argv = [sys.executable, "-m", "meshserve.router"]
        if args.profile:
            argv = [sys.executable, "-m", "cProfile", "-o", str(profile_path), "-m", "meshserve.router"]
        procs.append(subprocess.Popen(argv, env=router_env, cwd=ROOT))
        wait_grpc(f"127.0.0.1:{model_port}")
        wait_grpc(f"127.0.0.1:{router_port}")

        pairs = [
            ("mlserver", stack.pods[0].mlserver_grpc, stack.router_grpc, "bench-iris"),
            ("fixed-reply", f"127.0.0.1:{model_port}", f"127.0.0.1:{router_port}", "fake"),
        ]
        with grpc.insecure_channel(stack.router_grpc, options=OPTIONS) as channel:  # cold load through the router
            channel.unary_unary(INFER)(payload("bench-iris", 2), timeout=120)
        rows = []
        uvloop.install()
        for target, direct, routed, model in pairs:
            for size, nrows in (("small", 2), ("1MiB", 65536)):
                body = payload(model, nrows)
                for concurrency in (1, 32):
                    d = asyncio.run(run(direct, body, concurrency, args.seconds))
                    r = asyncio.run(run(routed, body, concurrency, args.seconds))
                    rows.append((target, size, concurrency, d, r))
                    print(f"  done {target} {size} c={concurrency}", file=sys.stderr)

        header = f"{'target':<12}{'tensor':<7}{'conc':>5} | {'direct rps':>10}{'p50':>8}{'p99':>8} | {'router rps':>10}{'p50':>8}{'p99':>8} | {'rps ratio':>9}{'+p50 ms':>9}"
        print(header)
        print("-" * len(header))
        for target, size, concurrency, d, r in rows:
            print(
                f"{target:<12}{size:<7}{concurrency:>5} | {d[0]:>10.0f}{d[1]:>8.2f}{d[2]:>8.2f} | {r[0]:>10.0f}{r[1]:>8.2f}{r[2]:>8.2f} | {r[0] / d[0]:>9.2f}{r[1] - d[1]:>9.2f}"
                + (f"  errors {d[3]}/{r[3]}" if d[3] or r[3] else "")
            )
        print("targets: added p50 <= 0.3 ms, throughput >= 0.9x direct (latencies in ms; 2 CPUs shared by client, router and server)")
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
