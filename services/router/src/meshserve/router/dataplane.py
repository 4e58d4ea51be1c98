"""The router's data plane, shared by its transports: resolve the model, make sure a
copy is loaded, pick a copy, forward the serialized request, retry once when a copy
vanished.

Requests stay bytes: only the model-name field is rewritten (`wire.replace_string`).
Concurrent misses for one model share one `EnsureLoaded` call to the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence

import grpc

from meshserve.common.errors import InvalidArgument, MeshError, NotFound, from_grpc
from meshserve.common.grpcutil import message_size_options, open_channel
from meshserve.common.proto.meshserve.v1 import scheduler_pb2, scheduler_pb2_grpc
from meshserve.router import balance, metrics
from meshserve.router.upstream_errors import client_status
from meshserve.router.settings import RouterSettings
from meshserve.router.table import Endpoint, RoutingTable

log = logging.getLogger(__name__)

# the model server's words for "that model is not here" (MLServer answers ModelReady
# for an unknown model with UNKNOWN "Unexpected ModelNotFound")
_GONE = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE}


class ModelServerPool:
    """One kept-alive channel per model-server address."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}

    def call(self, address: str, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        key = (address, method)
        callable_ = self._calls.get(key)
        if callable_ is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = open_channel(
                    address,
                    tls=self.settings.model_server_tls,
                    options=message_size_options(self.settings.max_message_bytes),
                )
                self._channels[address] = channel
            callable_ = channel.unary_unary(method)
            self._calls[key] = callable_
        return callable_

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._calls.clear()


class DataPlane:
    def __init__(self, *, settings: RouterSettings, table: RoutingTable, scheduler: scheduler_pb2_grpc.SchedulerStub) -> None:
        self.settings = settings
        self.table = table
        self.scheduler = scheduler
        self.pool = ModelServerPool(settings)
        self.in_flight: Counter[str] = Counter()
        self.usage: Counter[str] = Counter()
        self._ensuring: dict[str, asyncio.Future[tuple[Endpoint, ...]]] = {}
        self._rng = random.Random()

    async def close(self) -> None:
        await self.pool.close()

    # -- model resolution ---------------------------------------------------------------
    @staticmethod
    def name_from_headers(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
        model = vmodel = None
        for key, value in metadata:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if key in ("mm-model-id", "mm-model-id-bin", "tas-model-id"):
                model = text
            elif key in ("mm-vmodel-id", "mm-vmodel-id-bin"):
                vmodel = text
        if model and vmodel:
            raise InvalidArgument("must include only one of model id and vmodel id")
        return model or vmodel

    async def ensure(self, model_id: str, *, timeout: float, refresh: bool = False) -> tuple[Endpoint, ...]:
        endpoints = self.table.endpoints(model_id)
        if endpoints and not refresh:
            return endpoints
        future = self._ensuring.get(model_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._ensuring[model_id] = future
            asyncio.create_task(self._ensure_call(model_id, future, timeout))
        metrics.MISSES.labels(model_id).inc()
        started = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            metrics.COLD_WAIT.observe(time.monotonic() - started)

    async def _ensure_call(self, model_id: str, future: asyncio.Future[tuple[Endpoint, ...]], timeout: float) -> None:
        try:
            response = await self.scheduler.EnsureLoaded(
                scheduler_pb2.EnsureLoadedRequest(model_id=model_id), timeout=max(timeout, 1.0)
            )
            endpoints = tuple(Endpoint(e.pod_id, e.grpc_address, e.rest_address) for e in response.endpoints)
            if endpoints:
                self.table.set_endpoints(model_id, endpoints)
            future.set_result(endpoints)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            details = err.details() or code.name
            if code == grpc.StatusCode.NOT_FOUND:
                future.set_exception(NotFound(f"model {model_id!r} not found"))
            else:
                future.set_exception(from_grpc(code, details))
        except Exception as err:  # noqa: BLE001 - surface as the waiting requests' error
            future.set_exception(err)
        finally:
            self._ensuring.pop(model_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # mark retrieved: no "never retrieved" warning

    # -- forwarding -----------------------------------------------------------------------
    async def forward(
        self,
        *,
        method: str,
        model_id: str,
        payload: bytes,
        metadata: Sequence[tuple[str, str | bytes]],
        timeout: float,
    ) -> bytes:
        """Send `payload` (already rewritten for `model_id`) to a copy; retry once if it vanished."""
        deadline = time.monotonic() + timeout
        refresh = False
        for attempt in (1, 2):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise from_grpc(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded waiting for {model_id!r}")
            endpoints = await self.ensure(model_id, timeout=remaining, refresh=refresh)
            if not endpoints:
                raise from_grpc(grpc.StatusCode.UNAVAILABLE, f"model {model_id!r} has no loaded copy")
            endpoint = balance.pick(endpoints, self.in_flight, self._rng)
            self.in_flight[endpoint.pod_id] += 1
            try:
                call = self.pool.call(endpoint.grpc_address, method)
                reply: bytes = await call(
                    payload, metadata=[*metadata, ("mm-model-id", model_id)], timeout=deadline - time.monotonic()
                )
                self.usage[model_id] += 1
                return reply
            except grpc.aio.AioRpcError as err:
                if attempt == 1 and _copy_gone(err):
                    log.info("copy of %s on %s is gone (%s); retrying", model_id, endpoint.pod_id, err.code().name)
                    self.table.drop_endpoint(model_id, endpoint.pod_id)
                    refresh = not self.table.endpoints(model_id)
                    continue
                details = err.details() or err.code().name
                raise from_grpc(client_status(method, err.code(), details), details) from err
            finally:
                self.in_flight[endpoint.pod_id] -= 1
        raise AssertionError("unreachable")


def _copy_gone(err: grpc.aio.AioRpcError) -> bool:
    if err.code() == grpc.StatusCode.UNAVAILABLE:
        return True
    details = (err.details() or "").lower()
    if err.code() == grpc.StatusCode.NOT_FOUND and "not found" in details and "model" in details:
        return True
    return err.code() == grpc.StatusCode.UNKNOWN and "modelnotfound" in details.replace(" ", "")


__all__ = ["DataPlane", "MeshError"]
