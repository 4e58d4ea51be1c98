"""The scheduler's side of the puller API (`meshserve.v1.ModelRuntime`): one pooled
channel per puller, the status codes that blame the model rather than the pod, and what
a load or size request says about a registered model.

`loading.py`, `unloading.py` and `pods.py` make the calls and decide what to do with
their results; nothing here reads or writes scheduler state.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from meshserve.common.proto.meshserve.v1 import runtime_pb2_grpc
from meshserve.common.storage import parse_storage_uri
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.store.registry import ModelRecord

# puller status codes that mean "the model itself is bad": do not try other pods
MODEL_FAULTS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class PullerClients:
    """One pooled channel per puller management address."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self._settings = settings
        self._stubs: dict[str, tuple[grpc.aio.Channel, runtime_pb2_grpc.ModelRuntimeStub]] = {}

    def stub(self, address: str) -> runtime_pb2_grpc.ModelRuntimeStub:
        entry = self._stubs.get(address)
        if entry is None:
            from meshserve.common.grpcutil import open_channel

            channel = open_channel(address, tls=self._settings.puller_tls)
            entry = (channel, runtime_pb2_grpc.ModelRuntimeStub(channel))
            self._stubs[address] = entry
        return entry[1]

    async def close(self) -> None:
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()


def storage_path(record: ModelRecord) -> str:
    """The `model_path` a puller is sent for `record`."""
    if record.storage_uri:
        return parse_storage_uri(record.storage_uri, record.storage_params).path
    return record.storage_path


def model_key(record: ModelRecord) -> str:
    """The `model_key` (JSON: storage params, format, storage key) a puller is sent for `record`."""
    params = dict(record.storage_params)
    if record.storage_uri:
        params = parse_storage_uri(record.storage_uri, params).params
    key: dict[str, Any] = {
        "storage_params": params,
        "model_type": {"name": record.model_type, "version": record.model_type_version},
    }
    if record.storage_key:
        key["storage_key"] = record.storage_key
    return json.dumps(key, sort_keys=True)
