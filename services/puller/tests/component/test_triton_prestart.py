"""The Triton pod's warm-up model against the real tritonserver (python backend): with the
frameworks imported at start, the first model of a format is measured like the next one;
without, it is also charged the framework's libraries that it maps first."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from meshserve.cli import triton
from meshserve.cli.procs import ProcessGroup, free_port
from meshserve.common.errors import InvalidArgument
from meshserve.puller.adapter import TritonAdapter
from meshserve.puller.memory import MemoryProbe
from meshserve.puller.triton_layout import WARM_MODEL

ROOT = Path(__file__).resolve().parents[4]
ONNX_MODEL = ROOT / "examples" / "models" / "onnx" / "mnist.onnx"


@dataclass
class Server:
    adapter: TritonAdapter
    probe: MemoryProbe
    repository: Path
    rest: str


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    if not ONNX_MODEL.exists():
        pytest.fail("example models missing: run `make examples` (make test does it)")
    install = triton.prepare(tmp_path / "install")
    repository = tmp_path / "models"
    repository.mkdir()
    http_port, grpc_port = free_port(), free_port()
    group = ProcessGroup(log_dir=tmp_path / "logs")
    proc = group.start(
        "triton", install.command(repository=repository, http_port=http_port, grpc_port=grpc_port),
        env=install.env(repository=repository), cwd=tmp_path,
    )
    pid_file = tmp_path / "triton.pid"
    pid_file.write_text(str(proc.popen.pid))
    rest = f"http://127.0.0.1:{http_port}"
    adapter = TritonAdapter(rest_url=rest, backends_dir=install.backends, keras_python=str(install.python))
    try:
        group.wait_until(proc, lambda: _ready(rest), timeout=60, what="starting tritonserver")
        yield Server(adapter, MemoryProbe(pid_file=pid_file, metrics_url=""), repository, rest)
    finally:
        await adapter.close()
        group.stop_all()


def _ready(rest: str) -> bool:
    try:
        return httpx.get(f"{rest}/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _measured_onnx_loads(server: Server, n: int) -> list[int]:
    sizes = []
    for i in range(n):
        folder = server.repository / f"onnx-{i}"
        folder.mkdir()
        shutil.copyfile(ONNX_MODEL, folder / "mnist.onnx")
        before = await server.probe.snapshot()
        await server.adapter.load(model_id=f"onnx-{i}", model_type="onnx", folder=folder, timeout=120)
        grown = server.probe.growth(before, await server.probe.snapshot())
        assert grown is not None and grown > 0
        sizes.append(grown)
    return sizes


async def test_with_the_framework_prestarted_the_first_onnx_model_measures_like_the_second(server: Server) -> None:
    warmed = await server.adapter.prestart_frameworks(["onnx", "sklearn"], repository=server.repository, timeout=120)
    assert warmed == ["onnx"]  # sklearn is no Triton format here: ignored (and logged)
    # loaded in Triton, but not a model of the pod's: never reported, never purged
    async with httpx.AsyncClient() as client:
        index = (await client.post(f"{server.rest}/v2/repository/index", json={"ready": True})).json()
    assert WARM_MODEL in {m["name"] for m in index}
    assert WARM_MODEL not in await server.adapter.loaded_models()
    first, second = await _measured_onnx_loads(server, 2)
    assert first <= second * 1.15, (first, second)
    assert sorted(await server.adapter.loaded_models()) == ["onnx-0", "onnx-1"]


async def test_without_the_warm_up_the_first_onnx_model_is_charged_onnxruntime(server: Server) -> None:
    first, second = await _measured_onnx_loads(server, 2)
    assert first > second * 1.15, (first, second)  # what the warm-up is for


async def test_the_warm_up_models_name_is_refused_as_a_model_id(server: Server) -> None:
    with pytest.raises(InvalidArgument, match="reserved"):
        await server.adapter.load(model_id=WARM_MODEL, model_type="onnx", folder=server.repository / "x", timeout=10)
