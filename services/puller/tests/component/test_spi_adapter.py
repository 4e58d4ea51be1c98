"""The SPI adapter and the puller's load path against a real runtime process: the example
runtime (examples/custom/spi-runtime/runtime.py) serving mmesh.ModelRuntime on a Unix socket
and KServe v2 on a loopback port. Nothing is faked: the adapter and PullerService talk gRPC to
the process, and answers are checked through its v2 endpoint."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from meshserve.cli.procs import Proc, ProcessGroup, free_port
from meshserve.common.errors import FailedPrecondition, Unavailable
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from meshserve.puller.memory import MemoryProbe
from meshserve.puller.service import PullerService
from meshserve.puller.settings import PullerSettings
from meshserve.puller.spi_adapter import SpiAdapter

ROOT = Path(__file__).resolve().parents[4]
RUNTIME = ROOT / "examples" / "custom" / "spi-runtime" / "runtime.py"
OVERHEAD = 64 * 1024  # the example runtime's size: 64 KiB + 8 bytes per parameter
W = [[0.5, -1.0], [2.0, 0.25], [1.0, 1.0]]
B = [0.1, -0.2]
CAPACITY, LOADING, TIMEOUT_MS, DEFAULT_SIZE = 123_456_789, 3, 45_000, 4242


@dataclass
class Runtime:
    group: ProcessGroup
    argv: list[str]
    socket: Path
    data: str
    proc: Proc | None = None

    @property
    def endpoint(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> None:
        self.proc = self.group.start(f"runtime-{self.socket.parent.name}", self.argv)

    def stop(self) -> None:
        assert self.proc is not None
        assert self.group.stop(self.proc) == 0, self.proc.tail()


def _runtime(root: Path, *extra: str) -> Runtime:
    root.mkdir(parents=True, exist_ok=True)
    (root / "storage-config").mkdir(exist_ok=True)
    (root / "storage-config" / "mykey").write_text(json.dumps({"type": "file"}))
    socket, port = root / "rt.sock", free_port()
    argv = [
        sys.executable, str(RUNTIME), "--grpc-endpoint", f"unix:{socket}", "--data-endpoint", f"port:{port}",
        "--host", "127.0.0.1", "--capacity-bytes", str(CAPACITY), "--max-loading-concurrency", str(LOADING),
        "--load-timeout-ms", str(TIMEOUT_MS), "--default-model-size-bytes", str(DEFAULT_SIZE),
        "--storage-config-dir", str(root / "storage-config"), *extra,
    ]
    rt = Runtime(ProcessGroup(log_dir=root / "logs"), argv, socket, f"127.0.0.1:{port}")
    rt.start()
    return rt


@pytest.fixture(scope="module")
def shared_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = _runtime(tmp_path_factory.mktemp("spi-rt"))
    yield rt
    rt.group.stop_all()


async def eventually(check: Callable[[], Awaitable[bool]], *, what: str, within: float = 30) -> None:
    """Poll `check` against a deadline (backing off to 0.25 s)."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + within, 0.02
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)


@pytest.fixture
async def adapter(shared_runtime: Runtime) -> AsyncIterator[SpiAdapter]:
    """A fresh adapter: its first ready() asks runtimeStatus, which purges the shared runtime."""
    a = SpiAdapter(endpoint=shared_runtime.endpoint)
    await eventually(a.ready, what="the runtime to answer READY")
    yield a
    await a.close()


def _service(tmp_path: Path, adapter: SpiAdapter, **settings: object) -> PullerService:
    s = PullerSettings(
        model_dir=tmp_path / "models", storage_config_dir=tmp_path / "no-storage-config", model_server_kind="spi",
        **settings,  # type: ignore[arg-type]
    )
    return PullerService(settings=s, adapter=adapter, memory=MemoryProbe(pid_file=None, metrics_url=""))


def _model_file(tmp_path: Path, name: str, body: object) -> Path:
    path = tmp_path / "storage" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def _file_key(**extra: object) -> str:
    return json.dumps({"storage_params": {"type": "file"}, "model_type": {"name": "linear-json"}, **extra})


async def _infer(data: str, model_id: str, x: np.ndarray) -> np.ndarray:
    async with grpc.aio.insecure_channel(data) as channel:
        request = v2.ModelInferRequest(model_name=model_id, inputs=[
            v2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(x.shape))
        ])
        request.inputs[0].contents.fp32_contents.extend(x.reshape(-1).tolist())
        reply = await v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    [out] = reply.outputs
    return np.array(out.contents.fp32_contents, dtype=np.float32).reshape([int(s) for s in out.shape])


async def _ready(data: str, model_id: str) -> bool:
    async with grpc.aio.insecure_channel(data) as channel:
        reply = await v2_grpc.GRPCInferenceServiceStub(channel).ModelReady(v2.ModelReadyRequest(name=model_id), timeout=10)
    return bool(reply.ready)


X = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]], dtype=np.float32)


def _expected(w: list[list[float]], b: list[float], x: np.ndarray = X) -> np.ndarray:
    return x.astype(np.float64) @ np.array(w) + np.array(b)


async def test_ready_reads_the_runtimes_status_and_limits(adapter: SpiAdapter) -> None:
    info = adapter.info
    assert info is not None
    assert (info.capacity_bytes, info.max_loading_concurrency, info.model_loading_timeout_ms) == (CAPACITY, LOADING, TIMEOUT_MS)
    assert info.runtime_version.startswith("linear-json-runtime")
    assert info.method_infos["inference.GRPCInferenceService/ModelInfer"] == (1,)
    assert info.puller_overrides() == {
        "capacity_bytes": CAPACITY, "max_loading_concurrency": LOADING, "load_timeout_seconds": 45.0,
        "default_model_size_bytes": DEFAULT_SIZE,
    }


async def test_a_model_is_downloaded_loaded_and_served_at_the_runtimes_size(
    adapter: SpiAdapter, shared_runtime: Runtime, tmp_path: Path
) -> None:
    service = _service(tmp_path, adapter)
    path = _model_file(tmp_path, "linear/model.json", {"weights": W, "bias": B})
    result = await service.load(model_id="lin-1", model_type="linear-json", model_path=str(path), model_key=_file_key())
    assert (tmp_path / "models" / "lin-1" / "model.json").is_file()  # the puller downloaded it
    assert result.size_bytes == OVERHEAD + 8 * (6 + 2) and not result.measured
    assert result.disk_bytes == path.stat().st_size
    assert await adapter.loaded_models() == ["lin-1"]
    np.testing.assert_allclose(await _infer(shared_runtime.data, "lin-1", X), _expected(W, B), rtol=1e-6)
    # readiness checks after startup do not ask runtimeStatus again (it would purge the model)
    for _ in range(3):
        assert await adapter.ready()
    assert await _ready(shared_runtime.data, "lin-1")
    await service.unload("lin-1")
    assert not await _ready(shared_runtime.data, "lin-1")
    assert not (tmp_path / "models" / "lin-1").exists()
    await adapter.unload(model_id="lin-1")            # idempotent
    await adapter.unload(model_id="never-loaded")
    assert await adapter.loaded_models() == []


async def test_the_size_comes_from_model_size_when_load_answers_zero(tmp_path: Path) -> None:
    rt = _runtime(tmp_path / "rt", "--size-in-load", "false")
    a = SpiAdapter(endpoint=rt.endpoint)
    try:
        await eventually(a.ready, what="the runtime to answer READY")
        path = _model_file(tmp_path, "one.json", {"weights": [1.0, 2.0, 3.0, 4.0], "bias": 0.5})
        size = await a.load_model(
            model_id="m0", model_type="linear-json", model_path=str(path), model_key="{}", timeout=10
        )
        assert size == OVERHEAD + 8 * 5 == a.loaded_size("m0")
        x = np.array([[1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
        np.testing.assert_allclose(await _infer(rt.data, "m0", x), [[10.5]], rtol=1e-6)
    finally:
        await a.close()
        rt.group.stop_all()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param('{"weights": [[1, 2], [3', "is not valid JSON", id="truncated"),
        pytest.param({"weights": [[1, 2], [3, 4]], "bias": [1, 2, 3]}, "bias has 3 values", id="bias"),
        pytest.param({"bias": 1}, 'must be a JSON object with "weights"', id="no-weights"),
    ],
)
async def test_a_file_the_runtime_refuses_fails_with_its_message_and_nothing_stays(
    adapter: SpiAdapter, shared_runtime: Runtime, tmp_path: Path, body: object, reason: str
) -> None:
    service = _service(tmp_path, adapter)
    good = _model_file(tmp_path, "good/model.json", {"weights": W, "bias": B})
    await service.load(model_id="good", model_type="linear-json", model_path=str(good), model_key=_file_key())
    bad = _model_file(tmp_path, "bad/model.json", body)
    with pytest.raises(FailedPrecondition) as err:
        await service.load(model_id="bad", model_type="linear-json", model_path=str(bad), model_key=_file_key())
    assert reason in err.value.message and "could not load bad" in err.value.message
    assert "bad" not in service.loaded and await adapter.loaded_models() == ["good"]
    assert not (tmp_path / "models" / "bad").exists()   # cleaned up after the failure
    np.testing.assert_allclose(await _infer(shared_runtime.data, "good", X), _expected(W, B), rtol=1e-6)


async def test_a_format_the_runtime_does_not_serve_is_refused(adapter: SpiAdapter, tmp_path: Path) -> None:
    service = _service(tmp_path, adapter)
    path = _model_file(tmp_path, "m.json", {"weights": W, "bias": B})
    with pytest.raises(FailedPrecondition, match="this runtime serves linear-json"):
        await service.load(model_id="sk", model_type="sklearn", model_path=str(path), model_key=_file_key())


async def test_without_a_storage_helper_the_runtime_gets_the_storage_details_and_fetches_itself(
    adapter: SpiAdapter, shared_runtime: Runtime, tmp_path: Path
) -> None:
    service = _service(tmp_path, adapter, storage_helper_disabled=True)
    w, b = [[3.0], [-2.0], [0.5]], [1.0]
    path = _model_file(tmp_path, "remote/model.json", {"weights": w, "bias": b})
    # the storage key "mykey" exists only in the runtime's storage-config folder (type file)
    key = json.dumps({"storage_key": "mykey", "storage_params": {}, "model_type": {"name": "linear-json"}})
    result = await service.load(model_id="remote", model_type="linear-json", model_path=str(path), model_key=key)
    assert result.disk_bytes == 0 and result.size_bytes == OVERHEAD + 8 * 4
    assert not (tmp_path / "models" / "remote").exists()  # the puller downloaded nothing
    np.testing.assert_allclose(await _infer(shared_runtime.data, "remote", X), _expected(w, b), rtol=1e-6)
    # the size guess is the runtime's too (here its default: the key has no disk_size_bytes)
    assert await service.predict_size(model_path=str(path), model_key=key, model_id="next") == DEFAULT_SIZE
    # a storage key the runtime does not know: its message comes back
    unknown = json.dumps({"storage_key": "nokey", "storage_params": {}})
    with pytest.raises(FailedPrecondition, match="storage key 'nokey'"):
        await service.load(model_id="remote-2", model_type="linear-json", model_path=str(path), model_key=unknown)


async def test_a_restarted_runtime_is_asked_again_and_its_models_are_forgotten(tmp_path: Path) -> None:
    rt = _runtime(tmp_path / "rt")
    a = SpiAdapter(endpoint=rt.endpoint)
    try:
        await eventually(a.ready, what="the runtime to answer READY")
        service = _service(tmp_path, a)
        path = _model_file(tmp_path, "m.json", {"weights": W, "bias": B})
        await service.load(model_id="m1", model_type="linear-json", model_path=str(path), model_key=_file_key())
        assert await service.sync_with_model_server() and sorted(service.loaded) == ["m1"]
        rt.stop()

        async def not_ready() -> bool:
            return not await a.ready()

        await eventually(not_ready, what="the adapter to notice the runtime is gone")
        assert await a.loaded_models() == []
        rt.start()
        await eventually(a.ready, what="the restarted runtime to answer READY")
        assert await service.sync_with_model_server()
        assert service.loaded == {}                       # the puller forgot the model with the runtime
        assert not await _ready(rt.data, "m1")
        # and loads it again from scratch
        await service.load(model_id="m1", model_type="linear-json", model_path=str(path), model_key=_file_key())
        np.testing.assert_allclose(await _infer(rt.data, "m1", X), _expected(W, B), rtol=1e-6)
    finally:
        await a.close()
        rt.group.stop_all()


async def test_a_runtime_that_is_not_there_is_unavailable(tmp_path: Path) -> None:
    a = SpiAdapter(endpoint=f"unix:{tmp_path / 'nobody.sock'}", status_timeout=1)
    try:
        assert not await a.ready()
        with pytest.raises(Unavailable):
            await a.load_model(model_id="m", model_type="linear-json", model_path="/x", model_key="{}", timeout=2)
        with pytest.raises(Unavailable):
            await a.unload(model_id="m")
        assert await a.predict_model_size(model_id="m", model_type="", model_path="", model_key="") == 0
    finally:
        await a.close()



@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (mounting needs root, as CI and `make test` have here)."""
    import subprocess

    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"this test mounts a 64 KiB tmpfs (needs root): {mounted.stderr.strip()}")
    yield small
    subprocess.run(["umount", str(small)], check=False)


async def test_a_full_model_directory_is_unavailable_on_this_pod_and_leaves_no_partial_files(
    adapter: SpiAdapter, tmp_path: Path, small_disk: Path
) -> None:
    s = PullerSettings(model_dir=small_disk / "models", storage_config_dir=tmp_path / "no-storage-config", model_server_kind="spi")
    service = PullerService(settings=s, adapter=adapter, memory=MemoryProbe(pid_file=None, metrics_url=""))
    big = _model_file(tmp_path, "big/model.json", {"weights": [[0.5] * 3] * 20_000, "bias": [0.0, 0.0, 0.0]})
    assert big.stat().st_size > 128 << 10
    with pytest.raises(Unavailable) as err:
        await service.load(model_id="big", model_type="linear-json", model_path=str(big), model_key=_file_key())
    assert "no space left" in err.value.message and str(small_disk / "models") in err.value.message
    assert not (small_disk / "models" / "big").exists() and "big" not in service.loaded
    assert "big" not in await adapter.loaded_models()
