"""A custom model runtime that speaks ModelMesh's runtime SPI: `mmesh.ModelRuntime` on its
`grpcEndpoint` and KServe v2 inference (`inference.GRPCInferenceService`) on its
`grpcDataEndpoint`, for a model format of its own, `linear-json`.

A `linear-json` model is one JSON file, `{"weights": W, "bias": b}`, where W is a list of d
numbers (one output) or a d x k matrix (rows: input features) and b a number or k numbers.
The answer to an input x of shape [n, d] is y = x . W + b, of shape [n, k], in the output
tensor `y` (FP32).

What the runtime does for each SPI call (the contract is proto/mmesh/model-runtime.proto):

* runtimeStatus: unloads everything it holds (its caller owns nothing yet), then answers
  READY with its capacity, loading concurrency, load timeout, default model size and the
  v2 methods it serves (id injection path [1]: `model_name` / `name`).
* loadModel: `modelPath` is the downloaded file or folder (the storage helper -- meshserve's
  puller -- fetched it). Without a storage helper (`storageHelper.disabled`), `modelKey`
  still has `storage_key` / `storage_params` and `modelPath` is the path inside the storage;
  the runtime then reads the storage secret (`--storage-config-dir`, one JSON file per key,
  as Kubernetes mounts the `storage-config` secret) and fetches the file itself (s3 or
  file). A file it cannot use is INVALID_ARGUMENT with the reason, and nothing stays loaded.
  The size it answers is `SIZE_OVERHEAD_BYTES + 8 x parameters`; with `--size-in-load false`
  it answers 0 and the caller asks modelSize, as ModelMesh allows.
* unloadModel: idempotent; modelSize and predictModelSize answer at once.

It uses meshserve's generated stubs for brevity (run `python scripts/gen_protos.py` first).
A runtime outside this repository generates its own from proto/mmesh/model-runtime.proto and
proto/kserve/v2/grpc_predict_v2.proto: only the package, service and field numbers matter.

    python examples/custom/spi-runtime/runtime.py --grpc-endpoint unix:/tmp/spi/runtime.sock \\
        --data-endpoint port:8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import grpc
import numpy as np

from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from meshserve.common.proto.mmesh import model_runtime_pb2 as mm
from meshserve.common.proto.mmesh import model_runtime_pb2_grpc as mm_grpc

log = logging.getLogger("spi-runtime")

FORMAT = "linear-json"
VERSION = "linear-json-runtime 0.1.0"
SIZE_OVERHEAD_BYTES = 64 * 1024
V2 = "inference.GRPCInferenceService"
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT64": "int64_contents"}


class ModelError(ValueError):
    """A model file this runtime cannot use (INVALID_ARGUMENT: nothing was loaded)."""


@dataclass(frozen=True)
class LinearModel:
    weights: np.ndarray  # (d, k)
    bias: np.ndarray     # (k,)

    @property
    def parameters(self) -> int:
        return int(self.weights.size + self.bias.size)

    @property
    def size_bytes(self) -> int:
        return SIZE_OVERHEAD_BYTES + 8 * self.parameters

    @classmethod
    def parse(cls, data: bytes, *, name: str) -> LinearModel:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise ModelError(f"{name} is not valid JSON: {err}") from err
        if not isinstance(doc, dict) or "weights" not in doc:
            raise ModelError(f'{name} must be a JSON object with "weights" (and "bias")')
        try:
            weights = np.asarray(doc["weights"], dtype=np.float64)
            bias = np.asarray(doc.get("bias", 0.0), dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ModelError(f"{name}: weights and bias must be numbers ({err})") from err
        if weights.ndim == 1:
            weights = weights.reshape(-1, 1)
        if weights.ndim != 2 or weights.size == 0:
            raise ModelError(f"{name}: weights must be a list of numbers or a matrix, not shape {list(weights.shape)}")
        k = weights.shape[1]
        bias = np.broadcast_to(bias, (k,)).copy() if bias.ndim == 0 else bias
        if bias.shape != (k,):
            raise ModelError(f"{name}: bias has {bias.size} values; the weights have {k} output(s)")
        if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
            raise ModelError(f"{name}: weights and bias must be finite")
        return cls(weights=weights, bias=bias)

    def predict(self, x: np.ndarray) -> np.ndarray:
        y: np.ndarray = (x.astype(np.float64) @ self.weights + self.bias).astype(np.float32)
        return y


# -- reading the model ---------------------------------------------------------------------
def _model_file(path: Path) -> Path:
    """The model's JSON file: `path` itself, or in a folder `model.json` / its only .json."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelError(f"model path {path} does not exist")
    named = path / "model.json"
    if named.is_file():
        return named
    found = sorted(p for p in path.rglob("*.json") if not any(part.startswith(".") for part in p.relative_to(path).parts))
    if len(found) != 1:
        raise ModelError(f"{path} should hold one .json model file (or model.json), found {len(found)}")
    return found[0]


def _storage_fields(config_dir: Path, key: dict[str, Any]) -> dict[str, Any]:
    """The storage secret entry for this model, with `storage_params` on top (puller rules)."""
    params = {str(k): v for k, v in (key.get("storage_params") or {}).items() if v not in (None, "")}
    if key.get("storage_key"):
        names = [str(key["storage_key"])]
    else:
        names = [f"default_{params['type']}", "default"] if params.get("type") else ["default"]
    fields: dict[str, Any] = {}
    for name in names:
        entry = config_dir / str(name)
        if entry.is_file():
            try:
                fields = dict(json.loads(entry.read_text()))
            except (OSError, ValueError, TypeError) as err:
                raise ModelError(f"storage key {name!r} is not a JSON object") from err
            break
    else:
        if key.get("storage_key"):
            raise ModelError(f"storage key {key['storage_key']!r} is not in {config_dir}")
    fields.update(params)
    return fields


def _fetch(config_dir: Path, key: dict[str, Any], path: str) -> tuple[bytes, str]:
    """(bytes, name) of the model fetched from its storage by the runtime itself (blocking)."""
    fields = _storage_fields(config_dir, key)
    kind = fields.get("type")
    if kind == "file":
        local = _model_file(Path(path))
        return local.read_bytes(), local.name
    if kind != "s3":
        raise ModelError(f"storage type {kind!r} is not supported by this runtime (s3, file)")
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = fields.get("bucket") or fields.get("default_bucket")
    if not bucket:
        raise ModelError("the storage has no bucket")
    client = boto3.client(
        "s3", endpoint_url=fields.get("endpoint_url") or None, region_name=fields.get("region") or "us-east-1",
        aws_access_key_id=fields.get("access_key_id") or None, aws_secret_access_key=fields.get("secret_access_key") or None,
    )
    object_key = path.lstrip("/")
    for candidate in (object_key, f"{object_key.rstrip('/')}/model.json"):
        try:
            body = client.get_object(Bucket=bucket, Key=candidate)["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                continue
            raise ModelError(f"s3://{bucket}/{candidate}: {err.response.get('Error', {}).get('Code')}") from err
        except BotoCoreError as err:
            raise ModelError(f"s3://{bucket}/{candidate}: {type(err).__name__}") from err
        return body, PurePosixPath(candidate).name
    raise ModelError(f"no model at s3://{bucket}/{object_key}")


def _parse_key(model_key: str) -> dict[str, Any]:
    try:
        key = json.loads(model_key) if model_key else {}
    except ValueError as err:
        raise ModelError("modelKey is not valid JSON") from err
    if not isinstance(key, dict):
        raise ModelError("modelKey must be a JSON object")
    return key


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker


# -- the runtime SPI -----------------------------------------------------------------------
@dataclass
class Options:
    capacity_bytes: int
    max_loading_concurrency: int
    load_timeout_ms: int
    default_model_size_bytes: int
    size_in_load: bool
    storage_config_dir: Path


class Runtime(mm_grpc.ModelRuntimeServicer):  # type: ignore[misc]
    def __init__(self, options: Options) -> None:
        self.options = options
        self.models: dict[str, LinearModel] = {}
        self._loading = asyncio.Semaphore(max(1, options.max_loading_concurrency))

    async def runtimeStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.models:
            log.info("runtimeStatus: purging %d model(s)", len(self.models))
        self.models.clear()
        o = self.options
        return mm.RuntimeStatusResponse(
            status=mm.RuntimeStatusResponse.READY,
            capacityInBytes=o.capacity_bytes,
            maxLoadingConcurrency=o.max_loading_concurrency,
            modelLoadingTimeoutMs=o.load_timeout_ms,
            defaultModelSizeInBytes=o.default_model_size_bytes,
            runtimeVersion=VERSION,
            methodInfos={
                f"{V2}/{m}": mm.RuntimeStatusResponse.MethodInfo(idInjectionPath=[1])
                for m in ("ModelInfer", "ModelMetadata", "ModelReady")
            },
        )

    async def loadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.modelType and request.modelType != FORMAT:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"model type {request.modelType!r}: this runtime serves {FORMAT}")
        async with self._loading:
            try:
                key = _parse_key(request.modelKey)
                if "storage_params" in key or "storage_key" in key:   # no storage helper: fetch it ourselves
                    data, name = await asyncio.to_thread(_fetch, self.options.storage_config_dir, key, request.modelPath)
                else:
                    path = await asyncio.to_thread(_model_file, Path(request.modelPath))
                    data, name = await asyncio.to_thread(path.read_bytes), path.name
                model = LinearModel.parse(data, name=name)
            except OSError as err:
                await abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"cannot read {request.modelPath}: {err.strerror}")
            except ModelError as err:
                log.info("could not load %s: %s", request.modelId, err)
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        self.models[request.modelId] = model
        log.info("loaded %s: %d input(s), %d output(s)", request.modelId, *model.weights.shape)
        return mm.LoadModelResponse(sizeInBytes=model.size_bytes if self.options.size_in_load else 0)

    async def unloadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.models.pop(request.modelId, None) is not None:
            log.info("unloaded %s", request.modelId)
        return mm.UnloadModelResponse()

    async def modelSize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self.models.get(request.modelId)
        if model is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"model {request.modelId!r} is not loaded")
        return mm.ModelSizeResponse(sizeInBytes=model.size_bytes)

    async def predictModelSize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # a conservative guess at once: JSON takes more bytes per number than the loaded model
        try:
            disk = _parse_key(request.modelKey).get("disk_size_bytes")
        except ModelError:
            disk = None
        size = SIZE_OVERHEAD_BYTES + int(disk) if isinstance(disk, int) and disk > 0 else self.options.default_model_size_bytes
        return mm.PredictModelSizeResponse(sizeInBytes=size)


# -- KServe v2 inference -------------------------------------------------------------------
class Inference(v2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return v2.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return v2.ServerMetadataResponse(name="linear-json-runtime", version="0.1.0")

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return v2.ModelReadyResponse(ready=request.name in self.runtime.models)

    async def _model(self, name: str, context: grpc.aio.ServicerContext) -> LinearModel:
        model = self.runtime.models.get(name)
        if model is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"model {name!r} is not loaded in this runtime")
        return model

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = await self._model(request.name, context)
        d, k = model.weights.shape
        return v2.ModelMetadataResponse(
            name=request.name, platform=FORMAT,
            inputs=[v2.ModelMetadataResponse.TensorMetadata(name="x", datatype="FP32", shape=[-1, d])],
            outputs=[v2.ModelMetadataResponse.TensorMetadata(name="y", datatype="FP32", shape=[-1, k])],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = await self._model(request.model_name, context)
        if len(request.inputs) != 1:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"expected one input tensor, got {len(request.inputs)}")
        tensor = request.inputs[0]
        dtype = DTYPES.get(tensor.datatype)
        if dtype is None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"datatype {tensor.datatype}: use one of {', '.join(DTYPES)}")
        raw = len(request.raw_input_contents) > 0
        if raw:
            values = np.frombuffer(request.raw_input_contents[0], dtype=np.dtype(dtype).newbyteorder("<"))
        else:
            values = np.asarray(getattr(tensor.contents, CONTENTS[tensor.datatype]), dtype=dtype)
        shape = [int(s) for s in tensor.shape]
        d, k = model.weights.shape
        if int(np.prod(shape)) != values.size or not shape or shape[-1] != d or len(shape) > 2:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"input shape {shape} with {values.size} values: expected [n, {d}]"
            )
        y = model.predict(values.reshape(-1, d))
        out = v2.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=[y.shape[0], k])
        response = v2.ModelInferResponse(model_name=request.model_name, id=request.id, outputs=[out])
        if raw:
            response.raw_output_contents.append(y.astype("<f4").tobytes())
        else:
            response.outputs[0].contents.fp32_contents.extend(y.reshape(-1).tolist())
        return response


# -- process -------------------------------------------------------------------------------
def bind_address(endpoint: str, *, host: str) -> str:
    """A ServingRuntime endpoint (`port:<n>` or `unix:<path>`) as a gRPC server address."""
    kind, _, rest = endpoint.partition(":")
    if kind == "port" and rest.isdigit():
        return f"{host}:{rest}"
    if kind == "unix" and rest:
        path = Path(rest.removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)   # a socket left by an earlier run
        return f"unix:{path}"
    raise SystemExit(f"endpoint {endpoint!r}: use port:<n> or unix:<path>")


def _env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in ("1", "true", "yes")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grpc-endpoint", default=env("RUNTIME_GRPC_ENDPOINT", "port:8085"),
                   help="mmesh.ModelRuntime (the ServingRuntime's grpcEndpoint; env RUNTIME_GRPC_ENDPOINT)")
    p.add_argument("--data-endpoint", default=env("RUNTIME_DATA_ENDPOINT", "port:8001"),
                   help="KServe v2 inference (grpcDataEndpoint; env RUNTIME_DATA_ENDPOINT)")
    p.add_argument("--host", default=env("RUNTIME_HOST", "0.0.0.0"), help="interface for the data endpoint's port")
    p.add_argument("--capacity-bytes", type=int, default=int(env("RUNTIME_CAPACITY_BYTES", str(256 * 1024 * 1024))))
    p.add_argument("--max-loading-concurrency", type=int, default=int(env("RUNTIME_LOADING_CONCURRENCY", "1")))
    p.add_argument("--load-timeout-ms", type=int, default=int(env("RUNTIME_LOAD_TIMEOUT_MS", "30000")))
    p.add_argument("--default-model-size-bytes", type=int, default=int(env("RUNTIME_DEFAULT_MODEL_SIZE", "1000000")))
    p.add_argument("--size-in-load", default=str(_env_bool("RUNTIME_SIZE_IN_LOAD", True)).lower(), choices=["true", "false"],
                   help="answer the size in loadModel (false: 0 there, the caller asks modelSize)")
    p.add_argument("--storage-config-dir", type=Path, default=Path(env("STORAGE_CONFIG_DIR", "/storage-config")),
                   help="the storage-config secret, for models without a storage helper")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    runtime = Runtime(Options(
        capacity_bytes=args.capacity_bytes, max_loading_concurrency=args.max_loading_concurrency,
        load_timeout_ms=args.load_timeout_ms, default_model_size_bytes=args.default_model_size_bytes,
        size_in_load=args.size_in_load == "true", storage_config_dir=args.storage_config_dir,
    ))
    # two servers: the data port is reachable from outside the pod, the SPI must not be
    management, data = grpc.aio.server(), grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    mm_grpc.add_ModelRuntimeServicer_to_server(runtime, management)
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(Inference(runtime), data)
    for server, endpoint, host in ((management, args.grpc_endpoint, "127.0.0.1"), (data, args.data_endpoint, args.host)):
        address = bind_address(endpoint, host=host)
        if server.add_insecure_port(address) == 0:
            raise SystemExit(f"cannot bind {address}")
    await management.start()
    await data.start()
    log.info("%s: mmesh.ModelRuntime on %s, KServe v2 on %s", VERSION, args.grpc_endpoint, args.data_endpoint)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.gather(data.stop(grace=5), management.stop(grace=5))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stdout)
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
