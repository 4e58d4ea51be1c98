"""The OVMS adapter against the fake OpenVINO Model Server, both real: the fake runs as its
own process under .venv-triton's python (where `openvino` is), the adapter talks to it over
its REST config API, and the tests call the loaded models over TF-Serving gRPC (Predict) and
KServe v2 gRPC (ModelInfer), comparing the answers with the model run by openvino directly in
another .venv-triton process.

The OpenVINO IR model is examples/models/onnx/mnist.onnx converted with
`openvino.convert_model` + `save_model` (FP32 weights) into a temporary folder."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from meshserve.common.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as kfs
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as kfs_grpc
from meshserve.common.proto.tensorflow.core.framework import types_pb2
from meshserve.common.proto.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from meshserve.puller import ovms_fake
from meshserve.puller.ovms_adapter import OVMSAdapter
from meshserve.puller.ovms_layout import config_json

from .conftest import EXAMPLES, ROOT, example_input

pytestmark = pytest.mark.integration

ONNX = EXAMPLES / "onnx" / "mnist.onnx"
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"  # where openvino is (make .venv-triton/.installed)
INP, OUT = "Input3", "Plus214_Output_0"

# run in .venv-triton: convert the ONNX model to IR, then run both with openvino directly
OPENVINO_DIRECTLY = """
import sys
import numpy as np
import openvino as ov

onnx, ir, data, out_ir, out_onnx = sys.argv[1:6]
ov.save_model(ov.convert_model(onnx), ir, compress_to_fp16=False)
x = np.load(data)
for path, target in ((ir, out_ir), (onnx, out_onnx)):
    result = ov.Core().compile_model(path, "CPU").create_infer_request().infer({"Input3": x})
    np.save(target, next(np.asarray(v) for port, v in result.items() if port.get_any_name() == "Plus214_Output_0"))
"""


@dataclass(frozen=True)
class Models:
    ir: Path  # folder with model.xml + model.bin
    data: np.ndarray
    want_ir: np.ndarray  # openvino on the IR, directly
    want_onnx: np.ndarray  # openvino on the ONNX file, directly


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    if not TRITON_PYTHON.exists():
        pytest.fail(f"{TRITON_PYTHON} is missing: run `make .venv-triton/.installed` (make test does it)")
    if not ONNX.exists():
        pytest.fail("example models missing: run `make examples` (make test does it)")
    root = tmp_path_factory.mktemp("openvino")
    (root / "ir").mkdir()
    data = example_input("onnx-mnist.json")
    np.save(root / "x.npy", data)
    done = subprocess.run(
        [str(TRITON_PYTHON), "-c", OPENVINO_DIRECTLY, str(ONNX), str(root / "ir" / "model.xml"), str(root / "x.npy"),
         str(root / "ir.npy"), str(root / "onnx.npy")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Models(ir=root / "ir", data=data, want_ir=np.load(root / "ir.npy"), want_onnx=np.load(root / "onnx.npy"))


@dataclass
class FakeOVMS:
    proc: asyncio.subprocess.Process
    config: Path
    log: Path
    grpc: str
    rest: str

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


async def start_fake(root: Path) -> FakeOVMS:
    if not ovms_fake.PROTOS.is_dir():
        pytest.fail("the fake OVMS's protobuf modules are missing: run `make proto`")
    config = root / "model_config_list.json"
    config.write_text(config_json({}))  # OVMS does not start without its config file
    log = root / "ovms.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            str(TRITON_PYTHON), str(ovms_fake.SERVER), "--port", "0", "--rest_port", "0", "--config_path", str(config),
            "--file_system_poll_wait_seconds", "0", "--grpc_bind_address", "127.0.0.1", "--rest_bind_address", "127.0.0.1",
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(120):
            while True:  # the fake's one stdout line once it serves
                line = await proc.stdout.readline()
                if not line:
                    raise AssertionError(f"the fake OVMS exited ({await proc.wait()}):\n{log.read_text(errors='replace')[-3000:]}")
                with contextlib.suppress(ValueError):
                    ready = json.loads(line)
                    if isinstance(ready, dict) and ready.get("event") == "ready":
                        break
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return FakeOVMS(proc, config, log, f"127.0.0.1:{ready['grpc_port']}", f"http://127.0.0.1:{ready['rest_port']}")


async def stop_fake(fake: FakeOVMS) -> None:
    fake.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        code = await fake.proc.wait()
    assert code == 0, f"the fake OVMS exited with {code}:\n{fake.log_tail()}"


@pytest.fixture(scope="module")
async def ovms(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FakeOVMS]:
    fake = await start_fake(tmp_path_factory.mktemp("ovms"))
    try:
        yield fake
    finally:
        await stop_fake(fake)  # SIGTERM: a clean exit, code 0


@pytest.fixture
async def adapter(ovms: FakeOVMS) -> AsyncIterator[OVMSAdapter]:
    """A fresh adapter: its first write of the config file replaces earlier tests' models."""
    a = OVMSAdapter(rest_url=ovms.rest, config_path=ovms.config)
    assert await a.ready(), ovms.log_tail()
    yield a
    for model_id in await a.loaded_models():
        await a.unload(model_id=model_id)
    await a.close()


@pytest.fixture
async def channel(ovms: FakeOVMS) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(ovms.grpc) as ch:
        yield ch


@pytest.fixture
def pod_dir(tmp_path: Path) -> Iterator[Path]:
    models = tmp_path / "models"
    models.mkdir()
    yield models
    shutil.rmtree(models, ignore_errors=True)


def ir_folder(models: Models, pod_dir: Path, model_id: str) -> Path:
    """What the puller downloads for an IR model stored as model.xml + model.bin."""
    folder = pod_dir / model_id
    shutil.copytree(models.ir, folder)
    return folder


def onnx_folder(pod_dir: Path, model_id: str) -> Path:
    """What the puller downloads for a single ONNX file (`storageUri: .../mnist.onnx`)."""
    folder = pod_dir / model_id
    folder.mkdir()
    shutil.copyfile(ONNX, folder / "mnist.onnx")
    return folder


async def predict(channel: grpc.aio.Channel, model: str, data: np.ndarray) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    tensor = request.inputs[INP]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.extend([tensor.tensor_shape.Dim(size=d) for d in data.shape])
    tensor.tensor_content = data.astype(np.float32).tobytes()
    response = await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    out = response.outputs[OUT]
    assert out.dtype == types_pb2.DT_FLOAT
    return np.frombuffer(out.tensor_content, dtype=np.float32).reshape([d.size for d in out.tensor_shape.dim])


async def model_infer(channel: grpc.aio.Channel, model: str, data: np.ndarray, *, raw: bool = True) -> np.ndarray:
    request = kfs.ModelInferRequest(model_name=model, id="t1")
    tensor = request.inputs.add(name=INP, datatype="FP32", shape=list(data.shape))
    if raw:
        request.raw_input_contents.append(data.astype(np.float32).tobytes())
    else:
        tensor.contents.fp32_contents.extend(data.ravel().tolist())
    response = await kfs_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert response.model_name == model and response.id == "t1" and response.model_version == "1"
    out = response.outputs[0]
    assert (out.name, out.datatype) == (OUT, "FP32")
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(list(out.shape))


def config_names(fake: FakeOVMS) -> list[str]:
    return [e["config"]["name"] for e in json.loads(fake.config.read_text())["model_config_list"]]


async def test_two_models_load_at_once_and_answer_as_openvino_does(
    models: Models, ovms: FakeOVMS, adapter: OVMSAdapter, channel: grpc.aio.Channel, pod_dir: Path
) -> None:
    ir_id, onnx_id = "mnist-ir__isvc-0123456789", "mnist-onnx__isvc-abcdef0123"
    ir, onnx = ir_folder(models, pod_dir, ir_id), onnx_folder(pod_dir, onnx_id)
    await asyncio.gather(  # concurrent loads: one config write + reload at a time
        adapter.load(model_id=ir_id, model_type="openvino_ir", folder=ir, timeout=120),
        adapter.load(model_id=onnx_id, model_type="onnx", folder=onnx, timeout=120),
    )
    assert await adapter.loaded_models() == sorted([ir_id, onnx_id])
    assert config_names(ovms) == sorted([ir_id, onnx_id])
    assert [p.name for p in ovms.config.parent.iterdir() if p.name.endswith(".tmp")] == []  # renamed, not left behind
    # the folders in OVMS's layout: version 1, the single ONNX file under OVMS's name
    assert sorted(p.relative_to(ir).as_posix() for p in ir.rglob("*") if p.is_file()) == ["1/model.bin", "1/model.xml"]
    assert (onnx / "1" / "model.onnx").is_file() and not (onnx / "mnist.onnx").exists()

    data = models.data
    got_tfs = await predict(channel, ir_id, data)
    got_kfs = await model_infer(channel, ir_id, data)
    got_onnx = await model_infer(channel, onnx_id, data, raw=False)
    assert got_tfs.shape == (1, 10)
    np.testing.assert_allclose(got_tfs, models.want_ir, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_kfs, models.want_ir, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_onnx, models.want_onnx, rtol=1e-5, atol=1e-6)

    stub = kfs_grpc.GRPCInferenceServiceStub(channel)
    assert (await stub.ModelReady(kfs.ModelReadyRequest(name=ir_id), timeout=10)).ready
    metadata = await stub.ModelMetadata(kfs.ModelMetadataRequest(name=onnx_id), timeout=10)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [(INP, "FP32", [1, 1, 28, 28])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [(OUT, "FP32", [1, 10])]
    status = await model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": ir_id}), timeout=10
    )
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


async def test_a_model_ovms_cannot_load_fails_with_its_reason_and_leaves_the_others_serving(
    models: Models, ovms: FakeOVMS, adapter: OVMSAdapter, channel: grpc.aio.Channel, pod_dir: Path
) -> None:
    good = "good__isvc-1111111111"
    await adapter.load(model_id=good, model_type="openvino", folder=ir_folder(models, pod_dir, good), timeout=120)

    bad = "broken__isvc-2222222222"
    folder = pod_dir / bad
    folder.mkdir()
    (folder / "model.xml").write_text("<net name='broken'><layers><layer")  # not an IR openvino can read
    (folder / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(FailedPrecondition) as failed:
        await adapter.load(model_id=bad, model_type="openvino_ir", folder=folder, timeout=120)
    assert failed.value.message == (
        "OVMS could not load the openvino_ir model (version 1: state LOADING, error_code UNKNOWN); OVMS answered the "
        "reload: HTTP 500: Reloading config file failed. Check server logs for more info."
    )
    assert "exception occurred while loading model broken__isvc-2222222222" in ovms.log.read_text()  # the why, in OVMS's log
    # taken out of the file again at once; the good one still serves
    assert config_names(ovms) == [good]
    assert await adapter.loaded_models() == [good]
    np.testing.assert_allclose(await predict(channel, good, models.data), models.want_ir, rtol=1e-5, atol=1e-6)

    # refused before OVMS sees it: the folder has no model file of the format
    empty = pod_dir / "no-onnx__isvc-3333333333"
    empty.mkdir()
    (empty / "labels.txt").write_text("0 1 2")
    (empty / "README.md").write_text("mnist")
    with pytest.raises(FailedPrecondition, match=r"version 1 of the onnx model needs one \.onnx file \(found: README\.md, labels\.txt\)"):
        await adapter.load(model_id=empty.name, model_type="onnx", folder=empty, timeout=120)
    with pytest.raises(FailedPrecondition, match="serves onnx and openvino_ir models, not 'sklearn'"):
        await adapter.load(model_id="sk__isvc-4444444444", model_type="sklearn", folder=empty, timeout=120)
    assert config_names(ovms) == [good]


async def test_unload_takes_the_model_out_and_ovms_stops_serving_it(
    models: Models, ovms: FakeOVMS, adapter: OVMSAdapter, channel: grpc.aio.Channel, pod_dir: Path
) -> None:
    keep, drop = "keep__isvc-5555555555", "drop__isvc-6666666666"
    await adapter.load(model_id=keep, model_type="onnx", folder=onnx_folder(pod_dir, keep), timeout=120)
    await adapter.load(model_id=drop, model_type="openvino_ir", folder=ir_folder(models, pod_dir, drop), timeout=120)
    assert await adapter.loaded_models() == sorted([keep, drop])

    await adapter.unload(model_id=drop)
    assert await adapter.loaded_models() == [keep]
    assert config_names(ovms) == [keep]
    for call in (predict(channel, drop, models.data), model_infer(channel, drop, models.data)):
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await call
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    await adapter.unload(model_id=drop)  # idempotent
    await adapter.unload(model_id="never-loaded__isvc-7777777777")
    np.testing.assert_allclose(await model_infer(channel, keep, models.data), models.want_onnx, rtol=1e-5, atol=1e-6)


async def test_a_new_adapter_purges_what_an_earlier_puller_left(
    models: Models, ovms: FakeOVMS, adapter: OVMSAdapter, pod_dir: Path
) -> None:
    """A restarted puller unloads whatever OVMS holds (PullerService.purge: loaded_models,
    then unload each), although its own list is empty."""
    left = "left-over__isvc-8888888888"
    await adapter.load(model_id=left, model_type="onnx", folder=onnx_folder(pod_dir, left), timeout=120)
    fresh = OVMSAdapter(rest_url=ovms.rest, config_path=ovms.config)
    try:
        assert await fresh.loaded_models() == [left]
        for model_id in await fresh.loaded_models():
            await fresh.unload(model_id=model_id)
        assert await fresh.loaded_models() == [] and config_names(ovms) == []
    finally:
        await fresh.close()


async def test_requests_ovms_would_refuse_get_its_codes_and_texts(
    models: Models, adapter: OVMSAdapter, channel: grpc.aio.Channel, pod_dir: Path
) -> None:
    model = "strict__isvc-9999999999"
    await adapter.load(model_id=model, model_type="openvino_ir", folder=ir_folder(models, pod_dir, model), timeout=120)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def request(*, name: str = model, shape: tuple[int, ...] = (1, 1, 28, 28), float_val: bool = False) -> predict_pb2.PredictRequest:
        r = predict_pb2.PredictRequest()
        r.model_spec.name = name
        t = r.inputs[INP]
        t.dtype = types_pb2.DT_FLOAT
        t.tensor_shape.dim.extend([t.tensor_shape.Dim(size=d) for d in shape])
        if float_val:  # OVMS reads FP32 from tensor_content only
            t.float_val.extend(models.data.ravel().tolist())
        else:
            t.tensor_content = models.data.tobytes()
        return r

    cases = [
        (request(name="nope"), grpc.StatusCode.NOT_FOUND, "Model with requested name is not found"),
        (request(shape=(1, 1, 28)), grpc.StatusCode.INVALID_ARGUMENT,
         "Invalid number of shape dimensions - Expected: (1,1,28,28); Actual: (1,1,28); input name: Input3"),
        (request(shape=(2, 1, 28, 28)), grpc.StatusCode.INVALID_ARGUMENT,
         "Invalid input batch size - Expected: 1; Actual: 2; input name: Input3"),
        (request(float_val=True), grpc.StatusCode.INVALID_ARGUMENT,
         "Invalid content size of tensor proto - Expected: 3136 bytes; Actual: 0 bytes; input name: Input3"),
    ]
    for req, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Predict(req, timeout=10)
        assert (refused.value.code(), refused.value.details()) == (code, text)


async def test_ovms_not_answering_is_unavailable_or_a_deadline(tmp_path: Path) -> None:
    folder = tmp_path / "m__isvc-0000000000"
    folder.mkdir()
    shutil.copyfile(ONNX, folder / "mnist.onnx")
    with contextlib.closing(socket.socket()) as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = OVMSAdapter(rest_url=f"http://127.0.0.1:{closed}", config_path=tmp_path / "config.json")
    try:
        assert not await down.ready()
        assert (tmp_path / "config.json").is_file()  # written for OVMS to start with
        with pytest.raises(Unavailable, match="OVMS is not reachable"):
            await down.load(model_id=folder.name, model_type="onnx", folder=folder, timeout=10)
    finally:
        await down.close()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = OVMSAdapter(rest_url=f"http://127.0.0.1:{port}", config_path=tmp_path / "config.json")
    try:
        with pytest.raises(DeadlineExceeded, match="within 1s"):
            await hung.load(model_id=folder.name, model_type="onnx", folder=folder, timeout=1)
    finally:
        await hung.close()
        server.close()
        await server.wait_closed()
