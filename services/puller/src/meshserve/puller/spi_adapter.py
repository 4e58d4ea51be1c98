"""The runtime-SPI adapter: drives a model server that implements ModelMesh's
`mmesh.ModelRuntime` itself (`MESHSERVE_PULLER_MODEL_SERVER_KIND=spi`).

A custom ServingRuntime without a `builtInAdapter` serves ModelMesh's runtime SPI
(proto/mmesh/model-runtime.proto) on its `grpcEndpoint` and KServe v2 inference on its
`grpcDataEndpoint`. In a ModelMesh pod the `mm` container calls the SPI, through the storage
helper (the puller) when one is configured. Here the puller stays the pod's agent (it
registers with the scheduler, heartbeats and downloads) and this adapter is how it talks to
the runtime, over grpc.aio at the `grpcEndpoint` (`port:<n>`, `unix:<path>`, or a plain
gRPC target such as `host:port`).

What it owns and its invariants:

* **runtimeStatus is called at startup only**, as ModelMesh does: an upstream runtime
  purges every model it holds before it answers READY, so asking again on every heartbeat
  would unload everything. After the first READY, `ready()` looks at the channel instead.
  When the connection to the runtime drops (the runtime restarted, or died), the adapter
  forgets what it loaded and asks runtimeStatus again before it reports ready: the runtime
  purges, the puller forgets, and the two agree on "nothing loaded". No keepalive pings are
  sent (a server that does not permit them answers with GOAWAY, which would look like a
  restart) and the client idle timeout is off, for the same reason.
* **`loaded_models()` is this adapter's own record** (the SPI has no listing RPC): the
  models whose loadModel succeeded and that were not unloaded since.
* **Sizes**: the size loadModel answered, or when that was 0, what modelSize answers
  (ModelMesh's rule). PullerService uses it as the copy's size when it cannot measure the
  runtime's memory itself.
* **Errors** from the runtime become `meshserve.common.errors` here and nowhere else: a
  failed load (INVALID_ARGUMENT, FAILED_PRECONDITION, INTERNAL, UNKNOWN, ...) is
  FailedPrecondition with the runtime's own message (the model is at fault: the scheduler
  does not retry it elsewhere); UNAVAILABLE is Unavailable (the pod is: it tries another).

What the runtime's status means for meshserve is in `RuntimeInfo.puller_overrides`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from meshserve.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    ResourceExhausted,
    Unavailable,
    from_grpc,
)
from meshserve.common.proto.mmesh import model_runtime_pb2 as pb
from meshserve.common.proto.mmesh import model_runtime_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

STATUS_TIMEOUT_SECONDS = 5.0
PREDICT_TIMEOUT_SECONDS = 0.5   # ModelMesh: predictModelSize "must return almost immediately"
SIZE_TIMEOUT_SECONDS = 30.0     # ModelMesh's sizing timeout
UNLOAD_TIMEOUT_SECONDS = 60.0
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.client_idle_timeout_ms", 2**31 - 1),  # an idle drop would look like a restart
    # a runtime that starts (or restarts) after the puller is seen within ~2 s, not after
    # gRPC's default backoff of up to 120 s
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]
# load failures that blame the model: the runtime tried (or refused) and said why
MODEL_FAULT_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.ALREADY_EXISTS,
})
# model-key fields only the storage helper reads: not forwarded once the files are local
STORAGE_FIELDS = ("storage_key", "storage_params", "bucket", "schema_path")


def grpc_target(endpoint: str) -> str:
    """A ServingRuntime endpoint as a gRPC target.

    `port:<n>` is the runtime in the same pod (127.0.0.1); `unix:<path>` (and
    `unix:///<path>`) is a Unix socket, which gRPC takes as it is; anything else with a
    colon (`host:port`, `dns:///host:port`) passes through. Raises InvalidArgument otherwise.
    """
    value = endpoint.strip()
    kind, sep, rest = value.partition(":")
    if kind == "port":
        if not rest.isdigit() or not 0 < int(rest) < 65536:
            raise InvalidArgument(f"runtime endpoint {endpoint!r}: port:<n> needs a port number 1-65535")
        return f"127.0.0.1:{int(rest)}"
    if kind == "unix":
        if not rest.strip("/"):
            raise InvalidArgument(f"runtime endpoint {endpoint!r}: unix:<path> needs a socket path")
        return value
    if not sep or not kind or not rest:
        raise InvalidArgument(f"runtime endpoint {endpoint!r}: use port:<n>, unix:<path> or host:port")
    return value


@dataclass(frozen=True)
class RuntimeInfo:
    """What a runtime said about itself in runtimeStatus (0 / empty: it did not say)."""

    capacity_bytes: int = 0
    max_loading_concurrency: int = 0
    model_loading_timeout_ms: int = 0
    default_model_size_bytes: int = 0
    runtime_version: str = ""
    numeric_runtime_version: int = 0
    method_infos: dict[str, tuple[int, ...]] = field(default_factory=dict)
    limit_model_concurrency: bool = False
    allow_any_method: bool = False

    @classmethod
    def from_response(cls, response: Any) -> RuntimeInfo:
        return cls(
            capacity_bytes=int(response.capacityInBytes),
            max_loading_concurrency=int(response.maxLoadingConcurrency),
            model_loading_timeout_ms=int(response.modelLoadingTimeoutMs),
            default_model_size_bytes=int(response.defaultModelSizeInBytes),
            runtime_version=str(response.runtimeVersion),
            numeric_runtime_version=int(response.numericRuntimeVersion),
            method_infos={str(k): tuple(int(i) for i in v.idInjectionPath) for k, v in response.methodInfos.items()},
            limit_model_concurrency=bool(response.limitModelConcurrency),
            allow_any_method=bool(response.allowAnyMethod),
        )

    def puller_overrides(self) -> dict[str, int | float]:
        """The puller settings the runtime's own values replace (as in ModelMesh, where the
        runtime's status is the source of these limits); values it left at 0 are not used.

        Flows from here into the pod's registration (PodReport: capacity, loading
        concurrency, default model size) and into the puller's load timeout. Not used by
        meshserve: `runtime_version` and `numeric_runtime_version` (logged; the latter is
        deprecated upstream), `method_infos` / `allow_any_method` (the router rewrites field
        1, `model_name`/`name`, of the KServe v2 requests it forwards -- the `[1]` injection
        path every upstream v2 runtime registers; the id paths of other methods come from the
        router's own settings, not from the pods), `limit_model_concurrency` and
        loadModel's `maxConcurrency` (a value per copy upstream; meshserve's per-copy limit is
        one per pod, the puller's `limit_per_model_concurrency` from the runtime's
        `perModelConcurrencyLimit`, which routers enforce).
        """
        out: dict[str, int | float] = {}
        if self.capacity_bytes > 0:
            out["capacity_bytes"] = self.capacity_bytes
        if self.max_loading_concurrency > 0:
            out["max_loading_concurrency"] = self.max_loading_concurrency
        if self.model_loading_timeout_ms > 0:
            out["load_timeout_seconds"] = self.model_loading_timeout_ms / 1000
        if self.default_model_size_bytes > 0:
            out["default_model_size_bytes"] = self.default_model_size_bytes
        return out

    def unused(self) -> list[str]:
        """The fields the runtime set that meshserve does not act on (for a log line)."""
        notes = []
        if self.limit_model_concurrency:
            notes.append(
                "limitModelConcurrency (the runtime's own per-copy maxConcurrency is not used: set the "
                "ServingRuntime annotation perModelConcurrencyLimit, LIMIT_PER_MODEL_CONCURRENCY)"
            )
        if self.method_infos and not self.allow_any_method:
            odd = sorted(m for m, path in self.method_infos.items() if path not in ((), (1,)))
            if odd:
                notes.append(f"methodInfos with id injection other than [1]: {', '.join(odd)}")
        return notes


def forwarded_model_key(model_key: str, *, disk_bytes: int) -> str:
    """The modelKey sent to the runtime once the puller has downloaded the files
    (upstream puller, `ProcessLoadModelRequest`): the storage fields removed, the bytes on
    disk in `disk_size_bytes`, every other field (model_type, ...) kept. `schema_path` is
    removed too: this puller does not download schemas, and a storage path would be of no
    use to the runtime."""
    try:
        key = json.loads(model_key) if model_key else {}
    except ValueError as err:
        raise InvalidArgument("model_key is not valid JSON") from err
    if not isinstance(key, dict):
        raise InvalidArgument("model_key must be a JSON object")
    out = {k: v for k, v in key.items() if k not in STORAGE_FIELDS}
    out["disk_size_bytes"] = disk_bytes
    return json.dumps(out, sort_keys=True)


def load_error(err: grpc.aio.AioRpcError, *, runtime: str, model_id: str, timeout: float) -> MeshError:
    """A failed loadModel as a meshserve error (see the module docstring)."""
    code, details = err.code(), (err.details() or "").strip()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{runtime} did not load {model_id} within {timeout:.0f}s")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return Unavailable(f"{runtime} is not reachable: {details or code.name}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"{runtime} has no room for {model_id}: {details or code.name}")
    if code in MODEL_FAULT_CODES:
        return FailedPrecondition(f"{runtime} could not load {model_id}: {details or code.name}")
    return from_grpc(code, f"{runtime} could not load {model_id}: {details or code.name}")


class SpiAdapter:
    """ModelServerAdapter over a runtime's `mmesh.ModelRuntime` (see the module docstring).

    Beside the adapter interface it offers `load_model` (the whole SPI request: path and
    key as given, answering the runtime's size), `predict_model_size` and `info` (the
    runtime's status, once READY)."""

    def __init__(self, *, endpoint: str, status_timeout: float = STATUS_TIMEOUT_SECONDS) -> None:
        self.endpoint = endpoint
        self.target = grpc_target(endpoint)
        self.status_timeout = status_timeout
        self.info: RuntimeInfo | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._held: dict[str, int] = {}   # model id -> size the runtime reported (0: none)
        self._connected = False           # runtimeStatus said READY on the current connection
        self._asking = asyncio.Lock()     # one runtimeStatus at a time (each one purges)

    @property
    def name(self) -> str:
        """How messages name the runtime: its own version string, else its endpoint."""
        if self.info is not None and self.info.runtime_version:
            return f"runtime {self.info.runtime_version!r}"
        return f"the runtime at {self.endpoint}"

    def _rpc(self) -> Any:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
            self._stub = pb_grpc.ModelRuntimeStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    # -- readiness ----------------------------------------------------------------------
    async def ready(self) -> bool:
        if self._connected:
            return True
        async with self._asking:
            return self._connected or await self._ask_status()

    async def _ask_status(self) -> bool:
        try:
            status = await self._rpc().runtimeStatus(pb.RuntimeStatusRequest(), timeout=self.status_timeout)
        except grpc.aio.AioRpcError as err:
            log.debug("runtimeStatus at %s: %s", self.endpoint, err.code().name)
            return False
        if status.status != pb.RuntimeStatusResponse.READY:
            return False
        info = RuntimeInfo.from_response(status)
        if info != self.info:
            log.info(
                "runtime at %s is ready: %s; not used: %s", self.endpoint, info.puller_overrides() or "no limits",
                ", ".join(info.unused()) or "nothing",
            )
        self.info = info
        self._held.clear()   # it purged everything before answering READY
        self._connected = True
        assert self._channel is not None
        self._watcher = asyncio.create_task(self._watch(self._channel), name=f"spi-channel-{self.endpoint}")
        self._watcher.add_done_callback(self._watch_ended)
        return True

    def _watch_ended(self, task: asyncio.Task[None]) -> None:
        """A watcher that failed cannot see a restart: start over as after a lost connection
        (forget, ask runtimeStatus again), so the puller and the runtime keep agreeing."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("watching the connection to %s failed", self.endpoint, exc_info=task.exception())
        self._held.clear()
        self._connected = False
        self._watcher = None

    async def _watch(self, channel: grpc.aio.Channel) -> None:
        """Wait until the connection that answered READY is gone, then forget what was loaded."""
        state = channel.get_state()
        seen_ready = state == grpc.ChannelConnectivity.READY
        while True:
            await channel.wait_for_state_change(state)
            state = channel.get_state()
            if state == grpc.ChannelConnectivity.READY:
                seen_ready = True
            elif seen_ready:
                break
        log.warning(
            "lost the connection to the runtime at %s (%s): forgetting its %d model(s); runtimeStatus "
            "is asked again before the pod reports ready", self.endpoint, state.name, len(self._held),
        )
        self._held.clear()
        self._connected = False
        self._watcher = None

    async def loaded_models(self) -> list[str]:
        return sorted(self._held)

    # -- loading ------------------------------------------------------------------------
    async def load(self, *, model_id: str, model_type: str, folder: Path, timeout: float) -> None:  # noqa: ASYNC109 - forwarded to the runtime
        """The plain adapter call: the downloaded folder, a key naming only the format."""
        key = json.dumps({"model_type": {"name": model_type}})
        await self.load_model(model_id=model_id, model_type=model_type, model_path=str(folder), model_key=key, timeout=timeout)

    async def load_model(
        self, *, model_id: str, model_type: str, model_path: str, model_key: str, timeout: float  # noqa: ASYNC109 - forwarded to the runtime
    ) -> int:
        """loadModel as ModelMesh sends it; returns the runtime's size of the loaded model
        (from loadModel, else from modelSize; 0 when the runtime reports none)."""
        request = pb.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=model_path, modelKey=model_key)
        try:
            response = await self._rpc().loadModel(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise load_error(err, runtime=self.name, model_id=model_id, timeout=timeout) from err
        size = int(response.sizeInBytes)
        if size == 0:
            size = await self._model_size(model_id)
        self._held[model_id] = size
        return size

    async def _model_size(self, model_id: str) -> int:
        try:
            response = await self._rpc().modelSize(pb.ModelSizeRequest(modelId=model_id), timeout=SIZE_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as err:
            log.info("modelSize of %s at %s failed: %s %s", model_id, self.endpoint, err.code().name, err.details())
            return 0
        return int(response.sizeInBytes)

    def loaded_size(self, model_id: str) -> int:
        """The runtime's size of a model this adapter loaded (0: unknown or not loaded)."""
        return self._held.get(model_id, 0)

    async def predict_model_size(self, *, model_id: str, model_type: str, model_path: str, model_key: str) -> int:
        """predictModelSize (optional upstream: UNIMPLEMENTED and any failure give 0)."""
        request = pb.PredictModelSizeRequest(modelId=model_id, modelType=model_type, modelPath=model_path, modelKey=model_key)
        try:
            response = await self._rpc().predictModelSize(request, timeout=PREDICT_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as err:
            log.debug("predictModelSize at %s: %s", self.endpoint, err.code().name)
            return 0
        return int(response.sizeInBytes)

    async def unload(self, *, model_id: str) -> None:
        try:
            await self._rpc().unloadModel(pb.UnloadModelRequest(modelId=model_id), timeout=UNLOAD_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code != grpc.StatusCode.NOT_FOUND:  # idempotent: unknown is unloaded
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise Unavailable(f"{self.name} did not unload {model_id}: {err.details() or code.name}") from err
                raise from_grpc(code, f"{self.name} could not unload {model_id}: {err.details() or code.name}") from err
        self._held.pop(model_id, None)
