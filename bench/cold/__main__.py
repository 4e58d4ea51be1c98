"""What does meshserve add to a cold model's first request? (`make bench-cold`; not a test)

Per format and runtime, the first answer's latency for a model nobody has loaded
(registered, no copy), through the router, against a baseline measured in the same run on
model servers the benchmark starts itself without meshserve (bench.sizes.direct, configured
as a pod's model server):

  baseline = S3 download of the same files with boto3 (a client made once, beforehand)
           + the model server's own load call for the laid-out folder (MLServer's / Triton's
             `POST /v2/repository/models/<m>/load`; OVMS: its config file + `POST
             /v1/config/reload`)
           + the first request sent straight to the model server's gRPC port
  overhead = cold first request through meshserve - baseline

Both sides first load one untimed copy of each format (the framework imported, its shared
pages mapped), then alternate: one cold model through meshserve, one on the direct server
(which goes first alternates too), R times; the tables show medians. The overhead is split at the puller's LoadModel call
(the scheduler's `placed` event times it): "in puller" = LoadModel - download - server
load; "around" = cold - LoadModel - first request (router, scheduler, size prediction,
route publication). A Keras model is converted to a SavedModel by the puller (upstream's
adapter does it too); the baseline lays the folder out untimed, so that conversion is part
of the overhead and shown on its own.

Then 100 concurrent first requests for one cold model: every request must be answered and
exactly one load must happen (counted from the scheduler's `placed` events and the
puller's log). Target (issue 14): overhead <= 50 ms.

    python -m bench.cold [--quick] [--repeats R] [--kinds mlserver,triton,ovms] [--formats onnx,...]
                         [--concurrency 100] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from botocore.exceptions import ClientError
from tritonclient.utils import InferenceServerException

from bench.sizes import direct
from bench.sizes.catalog import EXAMPLES, RUNTIMES, Case, cases
from bench.sizes.formats import load_count, placed_event, start_pods
from meshserve.cli.devstack import EXAMPLE_BUCKET, PodHandle, Stack, StackConfig
from meshserve.cli.procs import ProcessGroup
from meshserve.common.proto.meshserve.v1 import runtime_pb2, runtime_pb2_grpc
from meshserve.common.storage import parse_storage_uri
from meshserve.puller.memory import private_bytes, tree_processes

MS = 1000.0


@dataclass
class Rep:
    cold: float  # first request through the router, seconds
    load_rpc: float  # the scheduler's LoadModel call (placed event)
    download: float  # baseline: boto3 download
    server_load: float  # baseline: the model server's load call
    infer: float  # baseline: first request straight to the model server
    convert: float  # baseline: Keras -> SavedModel (untimed in the baseline; 0 for other formats)
    probe: float  # the pod's memory readings of one load (two snapshots + the new process's private pages)
    predict: float  # one PredictModelSize call to the pod's puller (the scheduler makes one per cold model)

    @property
    def baseline(self) -> float:
        return self.download + self.server_load + self.infer

    @property
    def overhead(self) -> float:
        return self.cold - self.baseline

    @property
    def in_puller(self) -> float:
        return self.load_rpc - self.download - self.server_load

    @property
    def around(self) -> float:
        return self.cold - self.load_rpc - self.infer


@dataclass
class CaseResult:
    case: Case
    reps: list[Rep] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # cold requests that failed (not in the figures)

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.reps)


@dataclass
class Burst:
    case: Case
    requests: int
    ok: int
    errors: list[str]
    placed: int  # scheduler `placed` events for the model
    puller_loads: int  # "loaded <model>" lines in the puller's log
    latencies: list[float]
    wall: float


# -- the baseline's pieces ----------------------------------------------------------------
def s3_download(client: Any, *, path: str, dest: Path) -> float:
    """The files at `path` (one object, or every object under `path/`) into `dest`, as the
    puller lays them out; timed (seconds). `client` is made beforehand."""
    started = time.monotonic()
    key = path.strip("/")
    try:
        client.head_object(Bucket=EXAMPLE_BUCKET, Key=key)
        keys = [(key, Path(key).name)]
    except ClientError:
        listing = client.list_objects_v2(Bucket=EXAMPLE_BUCKET, Prefix=key + "/")
        keys = [(o["Key"], o["Key"][len(key) + 1 :]) for o in listing.get("Contents", []) if not o["Key"].endswith("/")]
    for obj, rel in keys:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(EXAMPLE_BUCKET, obj, str(target))
    return time.monotonic() - started


def _tensor(case: Case) -> grpcclient.InferInput:
    data = case.data()
    tensor = grpcclient.InferInput(case.inp, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def cold_request(client: grpcclient.InferenceServerClient, name: str, case: Case) -> float:
    tensor = _tensor(case)
    started = time.monotonic()
    client.infer(name, [tensor], outputs=[grpcclient.InferRequestedOutput(case.out)], client_timeout=300)
    return time.monotonic() - started


def puller_loads(pod: PodHandle, model: str) -> int:
    log = Path(pod.puller.log_path).read_text(errors="replace")  # type: ignore[attr-defined]
    return len(re.findall(rf"loaded {re.escape(model)} in ", log))


def probe_seconds(pod: PodHandle) -> float:
    """The memory readings the puller takes per load, timed on the pod as it is after the
    load: two snapshots of the model server's process tree (statm per process,
    `memory.tree_processes`) and the private pages of the newest process (one smaps_rollup
    read: a python-backend model's new stub)."""
    pid = int(pod.mlserver.popen.pid)  # type: ignore[attr-defined]
    started = time.monotonic()
    tree_processes(pid)
    after = tree_processes(pid)
    if after:
        private_bytes(max(after, key=lambda key: key[1])[0])  # (pid, start time): the newest
    return time.monotonic() - started


def predict_seconds(pod: PodHandle, name: str, case: Case) -> float:
    """The PredictModelSize call the scheduler makes before placing a cold model (the
    puller asks the storage for the files' sizes), timed against the pod's puller."""
    location = parse_storage_uri(f"s3://{EXAMPLE_BUCKET}/{case.path}")
    key = {"storage_params": location.params, "model_type": {"name": case.format, "version": ""}}
    request = runtime_pb2.PredictModelSizeRequest(
        model_id=name, model_type=case.format, model_path=location.path, model_key=json.dumps(key, sort_keys=True)
    )
    with grpc.insecure_channel(pod.puller_address) as channel:
        stub = runtime_pb2_grpc.ModelRuntimeStub(channel)
        stub.RuntimeStatus(runtime_pb2.RuntimeStatusRequest(), timeout=10)  # connected before timing
        started = time.monotonic()
        stub.PredictModelSize(request, timeout=30)
        return time.monotonic() - started


def _register(stack: Stack, name: str, case: Case) -> None:
    response = stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{case.path}", format=case.format, runtime=case.runtime)
    if response.status_code != 201:
        raise RuntimeError(f"registering {name}: {response.text}")


# -- the runs -------------------------------------------------------------------------------
def run_case(
    stack: Stack, pod: PodHandle, server: direct.DirectServer, s3: Any, client: grpcclient.InferenceServerClient,
    case: Case, *, repeats: int,
) -> CaseResult:
    slug = f"{case.kind}-{case.slug()}"
    # warm-up, untimed: the framework imported on both sides
    _register(stack, f"warm-{slug}", case)
    try:
        cold_request(client, f"warm-{slug}", case)
    except InferenceServerException as err:  # retried once: :load forgets the failure
        print(f"  warm-up load of warm-{slug} failed, retrying: {err}", flush=True)
        stack.admin("POST", f"/v1/models/warm-{slug}:load")
        cold_request(client, f"warm-{slug}", case)
    server.stage(f"warm-{slug}", case)
    server.load(f"warm-{slug}")
    server.infer(f"warm-{slug}", case)
    result = CaseResult(case)
    for i in range(repeats):
        name, base = f"cold-{slug}-{i}", f"direct-{slug}-{i}"

        def through_meshserve(name: str = name) -> tuple[float, float]:
            _register(stack, name, case)
            cold = cold_request(client, name, case)
            return cold, float(placed_event(stack, name).get("seconds", 0.0))

        def straight(base: str = base) -> tuple[float, float, float, float]:
            folder = server.models / base
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            download = s3_download(s3, path=case.path, dest=folder)
            convert = server.lay_out(base, case)
            return download, server.load(base), server.infer(base, case), convert

        # alternate which side goes first, so a drift in the machine's load hits both alike
        try:
            if i % 2 == 0:
                cold, load_rpc = through_meshserve()
                download, server_load, infer, convert = straight()
            else:
                download, server_load, infer, convert = straight()
                cold, load_rpc = through_meshserve()
        except InferenceServerException as err:  # a failed cold load: no figure, but counted
            print(f"  {name} failed: {err}", flush=True)
            result.failures.append(str(err))
            continue
        probe, predict = probe_seconds(pod), predict_seconds(pod, name, case)
        result.reps.append(Rep(cold, load_rpc, download, server_load, infer, convert, probe, predict))
        rep = result.reps[-1]
        print(
            f"  {case.runtime} {case.label}: cold {cold * MS:.0f} ms, baseline {rep.baseline * MS:.0f} ms "
            f"(download {download * MS:.0f}, load {server_load * MS:.0f}, infer {infer * MS:.0f}), "
            f"overhead {rep.overhead * MS:+.0f} ms",
            flush=True,
        )
    return result


async def _burst(address: str, name: str, case: Case, n: int) -> tuple[list[float], list[str], float]:
    client = aioclient.InferenceServerClient(address)
    data = case.data()

    async def one() -> float:
        tensor = aioclient.InferInput(case.inp, list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        started = time.monotonic()
        await client.infer(name, [tensor], outputs=[aioclient.InferRequestedOutput(case.out)], client_timeout=300)
        return time.monotonic() - started

    try:
        await client.is_server_ready()  # the channel is connected before the burst
        started = time.monotonic()
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        wall = time.monotonic() - started
    finally:
        await client.close()
    latencies = [r for r in results if isinstance(r, float)]
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return latencies, errors, wall


def run_burst(stack: Stack, pod: PodHandle, case: Case, *, n: int) -> Burst:
    name = f"burst-{case.kind}-{case.slug()}"
    _register(stack, name, case)
    latencies, errors, wall = asyncio.run(_burst(stack.router_grpc, name, case, n))
    time.sleep(0.5)  # a second load, if there were one, would have been logged by now
    return Burst(case, n, len(latencies), errors, load_count(stack, name), puller_loads(pod, name), latencies, wall)


def boto3_client_seconds(stack: Stack, n: int = 5) -> float:
    """What making one boto3 S3 client costs here (median): what the puller saves on each
    PredictModelSize and LoadModel by keeping its clients (storage_s3._client)."""
    creds = stack.s3_credentials()
    times = []
    for _ in range(n):
        started = time.monotonic()
        boto3.client(
            "s3", endpoint_url=stack.s3_endpoint, aws_access_key_id=creds["access_key_id"],
            aws_secret_access_key=creds["secret_access_key"], region_name="us-east-1",
        )
        times.append(time.monotonic() - started)
    return statistics.median(times)


# -- report ---------------------------------------------------------------------------------
def report(results: list[CaseResult], bursts: list[Burst], *, repeats: int, boto3_s: float) -> None:
    print(f"## Cold first request: meshserve's overhead over download + server load + first request (median of {repeats})")
    print("baseline = boto3 download + the model server's own load call + one request straight to it, same run;")
    print("in puller = LoadModel - download - server load (the memory probe is part of it); around = cold - LoadModel")
    print("- first request (router, scheduler, PredictModelSize, route publication); times in ms\n")
    print(
        f"{'runtime':<12} {'format':<13} {'cold':>6} {'download':>8} {'srv load':>8} {'infer':>5} {'baseline':>8} "
        f"{'overhead':>8} {'cold/base':>9} {'in puller':>9} {'probe':>7} {'around':>6} {'predict':>7} {'keras conv':>10}"
    )
    met = 0
    failed = [(r, f) for r in results for f in r.failures]
    results = [r for r in results if r.reps]
    for r in results:
        overhead = r.med("overhead")
        met += overhead <= 0.050
        convert = r.med("convert")
        print(
            f"{r.case.runtime:<12} {r.case.label:<13} {r.med('cold') * MS:>6.0f} {r.med('download') * MS:>8.0f} "
            f"{r.med('server_load') * MS:>8.0f} {r.med('infer') * MS:>5.0f} {r.med('baseline') * MS:>8.0f} "
            f"{overhead * MS:>+8.0f} {r.med('cold') / r.med('baseline'):>9.2f} {r.med('in_puller') * MS:>+9.0f} "
            f"{r.med('probe') * MS:>7.0f} {r.med('around') * MS:>+6.0f} {r.med('predict') * MS:>7.0f} "
            f"{(f'{convert * MS:.0f}' if convert else '-'):>10}"
        )
    if results:
        print(f"\ntarget overhead <= 50 ms: met for {met} of {len(results)} formats")
        keras = [r for r in results if r.case.format == "keras"]
        for r in keras:
            print(
                f"  {r.case.label}: without the Keras conversion the overhead is "
                f"{(r.med('overhead') - r.med('convert')) * MS:+.0f} ms"
            )
        for r, failure in failed:
            print(f"  {r.case.runtime} {r.case.label}: a cold load failed (left out, {len(r.reps)} figures kept): {failure[:200]}")
        print(f"one boto3 S3 client costs {boto3_s * MS:.0f} ms here (the puller keeps one per storage setting, so it pays this once)")
    if bursts:
        print("\n## Concurrent first requests for one cold model (through the router)")
        print(
            f"{'runtime':<12} {'format':<13} {'requests':>8} {'answered':>8} {'loads (events)':>14} {'loads (puller log)':>18} "
            f"{'p50 ms':>7} {'max ms':>7} {'max/single cold':>15}"
        )
        single = {(r.case.kind, r.case.label): r.med("cold") for r in results}
        for b in bursts:
            lat = b.latencies or [float("nan")]
            one = single.get((b.case.kind, b.case.label))
            print(
                f"{b.case.runtime:<12} {b.case.label:<13} {b.requests:>8} {b.ok:>8} {b.placed:>14} {b.puller_loads:>18} "
                f"{float(np.median(lat)) * MS:>7.0f} {max(lat) * MS:>7.0f} {(f'{max(lat) / one:.2f}' if one else '-'):>15}"
            )
            for err in sorted(set(b.errors))[:3]:
                print(f"  error: {err[:200]}")
            verdict = "exactly one load" if b.placed == 1 and b.puller_loads == 1 else "NOT exactly one load"
            print(f"  {b.case.label}: {verdict}; all {b.requests} answered in {b.wall * MS:.0f} ms" if b.ok == b.requests else
                  f"  {b.case.label}: {verdict}; {b.requests - b.ok} requests failed")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cold", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repetitions, one burst (noisy; for development)")
    parser.add_argument("--repeats", type=int, default=None, help="cold models per format (default 5, quick 2)")
    parser.add_argument("--kinds", default=",".join(RUNTIMES), help="pod kinds (mlserver, triton, ovms)")
    parser.add_argument("--formats", default="", help="only these format labels (e.g. onnx,xgboost/fil)")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in the burst")
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder (logs) after the run")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    kinds = {k.strip() for k in args.kinds.split(",") if k.strip()}
    labels = {f.strip() for f in args.formats.split(",") if f.strip()} or None
    chosen = cases(kinds, labels)
    burst_cases = [c for c in chosen if c.label == "sklearn" or (c.label == "onnx" and not args.quick)]

    root = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    stack = Stack(StackConfig(root=root, pods=0, pod_capacity_bytes=16 << 30))
    group = ProcessGroup(log_dir=root / "direct" / "logs")
    results: list[CaseResult] = []
    bursts: list[Burst] = []
    started = time.monotonic()
    try:
        stack.start()
        stack.upload_examples(EXAMPLES)
        # the puller's Keras converter imports tensorflow at pod start, as a deployment that
        # serves keras models would set it (MESHSERVE_PULLER_KERAS_CONVERTER_PRESTART)
        pods = start_pods(
            stack, {c.kind for c in chosen}, imports=False, triton_env={"MESHSERVE_PULLER_KERAS_CONVERTER_PRESTART": "true"}
        )
        servers = {
            kind: direct.start(kind, group=group, root=root / "direct", name=f"direct-{kind}") for kind in sorted(pods)
        }
        boto3_s = boto3_client_seconds(stack)
        s3 = stack.s3_client()
        client = grpcclient.InferenceServerClient(stack.router_grpc)
        try:
            for case in chosen:
                results.append(run_case(stack, pods[case.kind], servers[case.kind], s3, client, case, repeats=repeats))
            for case in burst_cases if args.concurrency > 0 else []:
                bursts.append(run_burst(stack, pods[case.kind], case, n=args.concurrency))
        finally:
            client.close()
            for server in servers.values():
                server.close()
    finally:
        group.stop_all()
        stack.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n(run took {time.monotonic() - started:.0f}s{f'; stack under {root}' if args.keep else ''})\n")
    report(results, bursts, repeats=repeats, boto3_s=boto3_s)


if __name__ == "__main__":
    main()
