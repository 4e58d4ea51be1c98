"""Steady open-loop load from several client processes: a fixed request rate over N models
with Zipf popularity, through the router's gRPC door (KServe v2 ModelInfer, raw bytes).

Each client process sends on its own schedule (rate / processes per second, a fixed period,
so a slow answer never slows the sending: requests go out as gRPC futures) and records
every request as (wall-clock send time, latency, gRPC status name, model index). Wall-clock
times, so the parent can line the records up with the moments it injected a fault. The
records come back through a file per process when `stop()` is called.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

INFER = "/inference.GRPCInferenceService/ModelInfer"
# the example sklearn model (mnist-svm): one 8x8 digit, the same as tests/integration's MNIST_INPUT
DIGIT = [0, 0, 1, 11, 14, 15, 3, 0, 0, 1, 13, 16, 12, 16, 8, 0, 0, 8, 16, 4, 6, 16, 5, 0, 0, 5, 15, 11, 13, 14, 0, 0,
         0, 0, 2, 12, 16, 13, 0, 0, 0, 0, 0, 13, 16, 16, 6, 0, 0, 0, 0, 16, 16, 16, 7, 0, 0, 0, 0, 11, 13, 12, 1, 0]


@dataclass(frozen=True)
class Record:
    sent: float      # wall clock (time.time()) when the request went out
    latency: float   # seconds until its answer (or its failure)
    code: str        # gRPC status name: "OK", "UNAVAILABLE", ...
    model: int       # index into the models list
    detail: str = ""  # the status details of a failure (cut to 200 characters)

    @property
    def done(self) -> float:
        return self.sent + self.latency


@dataclass(frozen=True)
class LoadSpec:
    address: str
    models: tuple[str, ...]
    rate: float                 # requests per second over all processes
    processes: int = 3
    zipf_s: float = 1.0
    timeout: float = 15.0       # each request's deadline
    seed: int = 20


def zipf_cum_weights(n: int, s: float) -> list[float]:
    """Cumulative Zipf weights: model i (0-based) is asked (1/(i+1))^s as often as model 0."""
    return list(accumulate(1.0 / (i + 1) ** s for i in range(n)))


def payload(model: str) -> bytes:
    import numpy as np

    from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2

    request = v2.ModelInferRequest(model_name=model)
    request.inputs.add(name="predict", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.array(DIGIT, dtype=np.float32).tobytes())
    return request.SerializeToString()


def _client(spec: LoadSpec, index: int, stop: threading.Event, out: str, answered: Any) -> None:
    """One client process: send until `stop`, wait for the answers, write the records."""
    import grpc

    rng = random.Random(spec.seed * 1000 + index)
    cum = zipf_cum_weights(len(spec.models), spec.zipf_s)
    bodies = [payload(m) for m in spec.models]
    period = spec.processes / spec.rate
    records: list[tuple[float, float, str, int, str]] = []
    sent = 0
    with grpc.insecure_channel(spec.address) as channel:
        call = channel.unary_unary(INFER)
        next_at = time.monotonic() + rng.random() * period
        while not stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)   # pacing: the next send is due then
                continue
            model = rng.choices(range(len(bodies)), cum_weights=cum)[0]
            wall, started = time.time(), time.perf_counter()
            future = call.future(bodies[model], timeout=spec.timeout)

            def done(f: grpc.Future, model: int = model, wall: float = wall, started: float = started) -> None:
                code = f.code()  # type: ignore[attr-defined]
                detail = "" if code == grpc.StatusCode.OK else str(f.details() or "")[:200]  # type: ignore[attr-defined]
                records.append((wall, time.perf_counter() - started, code.name if code else "UNKNOWN", model, detail))
                if code == grpc.StatusCode.OK:
                    with answered.get_lock():
                        answered.value += 1

            future.add_done_callback(done)
            sent += 1
            next_at += period
            if next_at < time.monotonic() - 1.0:   # fell more than 1 s behind (host busy): do not burst
                next_at = time.monotonic()
        deadline = time.monotonic() + spec.timeout + 5
        while len(records) < sent and time.monotonic() < deadline:
            time.sleep(0.05)   # the last answers (each has a deadline of spec.timeout)
    Path(out).write_text(json.dumps(list(records)))


class LoadGenerator:
    """`start()` the client processes, `stop()` them and get every record (sorted by send time)."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        ctx = mp.get_context("spawn")   # the parent holds gRPC channels and threads: never fork it
        self._stop = ctx.Event()
        self._answered = ctx.Value("q", 0)
        self._dir = tempfile.mkdtemp(prefix="chaos-load-")
        self._procs = [
            ctx.Process(target=_client, args=(spec, i, self._stop, f"{self._dir}/{i}.json", self._answered), name=f"chaos-client-{i}", daemon=True)
            for i in range(spec.processes)
        ]
        self.started_at = 0.0

    def start(self) -> LoadGenerator:
        self.started_at = time.time()
        for p in self._procs:
            p.start()
        return self

    def answered(self) -> int:
        """Requests answered OK so far, over all client processes."""
        return int(self._answered.value)

    def wait_answered(self, more: int, *, timeout: float, what: str) -> None:
        """Until `more` further requests than now have been answered OK (or `timeout`)."""
        target = self.answered() + more
        deadline = time.monotonic() + timeout
        while self.answered() < target:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {more} answers {what}")
            time.sleep(0.05)

    def stop(self) -> list[Record]:
        self._stop.set()
        records: list[Record] = []
        for i, p in enumerate(self._procs):
            p.join(timeout=self.spec.timeout + 60)
            if p.is_alive():
                p.kill()
                raise RuntimeError(f"load client {i} did not stop")
            path = Path(f"{self._dir}/{i}.json")
            if not path.exists():
                raise RuntimeError(f"load client {i} exited with {p.exitcode} and wrote no records")
            records.extend(Record(*r) for r in json.loads(path.read_text()))
            path.unlink()
        Path(self._dir).rmdir()
        return sorted(records, key=lambda r: r.sent)


def in_flight(records: Sequence[Record], at: float) -> int:
    """How many requests were out (sent, not yet answered) at wall-clock time `at`."""
    return sum(1 for r in records if r.sent <= at < r.done)


def in_flight_while(records: Sequence[Record], start: float, end: float) -> int:
    """How many requests were out at some moment of [start, end] (sent by `end`, answered after `start`)."""
    return sum(1 for r in records if r.sent <= end and r.done > start)


def p99(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
