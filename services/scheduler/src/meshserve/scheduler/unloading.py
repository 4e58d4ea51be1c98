"""Unloading one copy of a model: release it in live state, record it, tell its pod.

The lowest floor of the copy use cases: `loading.Loader` unloads through it to evict,
`copies.Copies` to unload on request, to unregister and to scale down. It decides
nothing; the callers chose the copy.

Invariant: when the release finds no copy (another scheduler replica removed it first,
acting on the same view), nothing is recorded and the pod is not told: the model may be
loading there again by now.

May import: `meshserve.common`, the store wing, `pullers`, `events`, `metrics`. Never
imports the use cases above it (`loading`, `copies`, `scaler`, `vmodels`, `service`) or
the transports.
"""

from __future__ import annotations

import logging
import time

import grpc

from meshserve.common.proto.meshserve.v1 import runtime_pb2
from meshserve.scheduler import metrics
from meshserve.scheduler.events import EventLog
from meshserve.scheduler.pullers import PullerClients
from meshserve.scheduler.store.live import LiveState, now_ms

log = logging.getLogger(__name__)


class Unloader:
    """Unloads single copies (evictions, admin unloads, scale-downs, unregistrations)."""

    def __init__(self, *, live: LiveState, pullers: PullerClients, events: EventLog) -> None:
        self.live = live
        self.pullers = pullers
        self.events = events

    async def unload_copy(self, *, model_id: str, pod_id: str, kind: str, why: str) -> None:
        """Release the copy in live state, then tell its pod (see the module's invariant)."""
        pod = await self.live.pod(pod_id)
        age_ms = await self._idle_ms(model_id, pod_id) if kind == "evicted" else None
        if not await self.live.release(model_id=model_id, pod_id=pod_id):
            log.debug("%s of %s on %s: already gone", kind, model_id, pod_id)
            return
        # recorded at the state change, not after the pod's (serialised, maybe slow) unload
        await self.events.record(kind, model_id=model_id, pod_id=pod_id, message=why)
        metrics.current().removed(model_id=model_id, kind=kind, age_ms=age_ms)
        if pod is not None:
            started = time.monotonic()
            try:
                await self.pullers.stub(pod.management_address).UnloadModel(
                    runtime_pb2.UnloadModelRequest(model_id=model_id), timeout=30
                )
            except grpc.aio.AioRpcError as err:
                log.warning("unload of %s on %s failed: %s", model_id, pod_id, err.details())
                metrics.current().unloaded(model_id=model_id, seconds=time.monotonic() - started, ok=False)
            else:
                metrics.current().unloaded(model_id=model_id, seconds=time.monotonic() - started, ok=True)

    async def _idle_ms(self, model_id: str, pod_id: str) -> float | None:
        """How long the copy on `pod_id` has gone unused (since its load when never used):
        upstream's age at eviction. None when live state does not say."""
        _, last_used = await self.live.usage(model_id)
        since = next((c.since_ms for c in await self.live.copies(model_id) if c.pod_id == pod_id), 0)
        used = max(int(last_used), since)
        return float(now_ms() - used) if used > 0 else None
