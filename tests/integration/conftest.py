"""Whole-stack fixtures: real Redis, Postgres, S3 (moto), scheduler, router and two
runtime pods (MLServer + puller), all as processes on loopback.

Uses MESHSERVE_REDIS_URL / MESHSERVE_DATABASE_URL / MESHSERVE_S3_ENDPOINT when set
(with a private database and Redis key prefix for this session), else starts private
instances. Process logs land in the session's temp folder and are printed when a test
fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "models"
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
MNIST_INPUT = np.array(
    [[0, 0, 1, 11, 14, 15, 3, 0, 0, 1, 13, 16, 12, 16, 8, 0, 0, 8, 16, 4, 6, 16, 5, 0, 0, 5, 15, 11, 13, 14, 0, 0,
      0, 0, 2, 12, 16, 13, 0, 0, 0, 0, 0, 13, 16, 16, 6, 0, 0, 0, 0, 16, 16, 16, 7, 0, 0, 0, 0, 11, 13, 12, 1, 0]],
    dtype=np.float32,
)
MNIST_URI = f"s3://{EXAMPLE_BUCKET}/sklearn/mnist-svm.joblib"
IRIS_URI = f"s3://{EXAMPLE_BUCKET}/sklearn/iris-logreg.joblib"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not (EXAMPLES / "sklearn" / "mnist-svm.joblib").exists():
        pytest.fail("example models missing: run `make examples` (make test does it)")
    root = tmp_path_factory.mktemp("stack")
    s = Stack(StackConfig.from_env(root, pods=2, isolate=True))
    s.start()
    try:
        s.upload_examples(EXAMPLES)
        yield s
    finally:
        s.stop()


@contextlib.contextmanager
def data_path_stack(tmp_path_factory: pytest.TempPathFactory, data_path: str) -> Iterator[Stack]:
    """A stack of its own (one pod) whose router runs `data_path` ("envoy" or "python"):
    MESHSERVE_ROUTER_DATA_PATH is set while it starts (the router process inherits it)."""
    given = os.environ.get("MESHSERVE_ROUTER_DATA_PATH")
    os.environ["MESHSERVE_ROUTER_DATA_PATH"] = data_path
    s = Stack(StackConfig.from_env(Path(tmp_path_factory.mktemp(f"{data_path}-path-stack")), pods=1, isolate=True))
    try:
        s.start()
        s.upload_examples(EXAMPLES)
        yield s
    finally:
        if given is None:
            os.environ.pop("MESHSERVE_ROUTER_DATA_PATH", None)
        else:
            os.environ["MESHSERVE_ROUTER_DATA_PATH"] = given
        s.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    stacks = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, Stack)]
    stack = stacks[0] if stacks else None
    if report.when == "call" and report.failed and isinstance(stack, Stack):
        for proc in stack.group.procs:
            report.sections.append((f"log of {proc.name}", proc.tail(30)))


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def triton(stack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    yield client
    client.close()


def mnist_inputs(data: np.ndarray = MNIST_INPUT, *, name: str = "predict", datatype: str = "FP32") -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    return [inp]


INPUTS = ROOT / "examples" / "inputs"


def example_input(name: str) -> np.ndarray:
    """The first tensor of `examples/inputs/<name>` as FP32, in its shape."""
    tensor = json.loads((INPUTS / name).read_text())["inputs"][0]
    return np.array(tensor["data"], dtype=np.float32).reshape(tensor["shape"])


def infer_one(
    client: grpcclient.InferenceServerClient | str, model: str, data: np.ndarray, *, inp: str, out: str
) -> np.ndarray:
    """One FP32 tensor in, the output `out` back; a `client` given as an address is opened
    for this call and closed after it."""
    if isinstance(client, str):
        own = grpcclient.InferenceServerClient(client)
        try:
            return infer_one(own, model, data, inp=inp, out=out)
        finally:
            own.close()
    tensor = grpcclient.InferInput(inp, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    wanted = [grpcclient.InferRequestedOutput(out)]
    return client.infer(model, [tensor], outputs=wanted, client_timeout=90).as_numpy(out)  # type: ignore[no-any-return]


def direct_xgboost(path: Path, data: np.ndarray) -> np.ndarray:
    import xgboost as xgb

    return xgb.Booster(model_file=str(path)).predict(xgb.DMatrix(data))  # type: ignore[no-any-return]


def direct_lightgbm(path: Path, data: np.ndarray) -> np.ndarray:
    import lightgbm as lgb

    return lgb.Booster(model_file=str(path)).predict(data)  # type: ignore[no-any-return]


def direct_onnx(path: Path, data: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"Input3": data})[0]  # type: ignore[no-any-return]


def direct_framework(framework: str, path: Path, data: np.ndarray, *, inp: str, out: str) -> np.ndarray:
    """The model run by its own framework in Triton's environment (torch, tensorflow, keras
    and openvino are installed there, not here): direct_frameworks.py in a child process."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        given, got = Path(scratch) / "in.npy", Path(scratch) / "out.npy"
        np.save(given, data)
        subprocess.run(
            [str(TRITON_PYTHON), str(Path(__file__).with_name("direct_frameworks.py")), framework, str(path), str(given), inp, out, str(got)],
            check=True, timeout=300, stdout=subprocess.DEVNULL,
        )
        return np.load(got)  # type: ignore[no-any-return]


T = TypeVar("T")


def wait_for(check: Callable[[], T], *, timeout: float = 60, what: str = "condition") -> T:
    """Poll `check` (backing off to 0.5 s) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
