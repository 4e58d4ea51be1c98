"""The copies of a model: ensure one is loaded, unload them, say what state they are in.

Owns the load tasks shared between concurrent callers (`ensure_loaded`: one per model in
this replica), loads started in the background, the endpoints of loaded copies, and the
model's state as the copies and the recorded failure give it. Placing and loading a copy
is `loading.Loader`; unloading one is `unloading.Unloader`; checking a pod a router
suspects is `pods.Pods`. Dropping a model's copies and its registration (for an
unregistration, by the service or on a vmodel's behalf) is here too, since it is mostly
unloading.

Concurrency rules:
* concurrent `ensure_loaded` calls for one model in this replica share one task;
* a copy just loaded can be gone before the answer (evicted at once on a full cluster, or
  its pod dropped): `ensure_loaded` loads again, `ENSURE_ROUNDS` times at most.

May import: `meshserve.common`, the store, placement and routing wings, `loading`,
`unloading`, `pods`, `events`, `status`, `models`. Never imports `scaler`, `vmodels`,
`service` or the transports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meshserve.common.errors import MeshError, NotFound
from meshserve.common.labels import model_labels
from meshserve.scheduler.events import EventLog
from meshserve.scheduler.loading import Loader
from meshserve.scheduler.models import CopyRecord, CopyState, ModelRecord
from meshserve.scheduler.placement.views import ClusterViews
from meshserve.scheduler.pods import Pods
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.status import LOADED, NOT_FOUND, ModelState, active_failure, model_status
from meshserve.scheduler.store.live import LiveState
from meshserve.scheduler.store.registry import Registry
from meshserve.scheduler.unloading import Unloader

log = logging.getLogger(__name__)

ENSURE_ROUNDS = 3
"""Loads `ensure_loaded` starts for one call at most, when a loaded copy vanishes before it answers."""


@dataclass(frozen=True)
class Endpoint:
    pod_id: str
    grpc_address: str
    rest_address: str


class Copies:
    """Loads, unloads and reports the copies of models."""

    def __init__(
        self,
        *,
        settings: SchedulerSettings,
        registry: Registry,
        live: LiveState,
        views: ClusterViews,
        loader: Loader,
        unloader: Unloader,
        pods: Pods,
        events: EventLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.live = live
        self.views = views
        self.loader = loader
        self.unloader = unloader
        self.pods = pods
        self.events = events
        self.clock = clock
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- state -----------------------------------------------------------------------------
    async def model_state(self, model_id: str, record: ModelRecord | None = None) -> ModelState:
        record = record or await self.registry.find_model(model_id)
        if record is None:
            return ModelState(NOT_FOUND, (f"model {model_id!r} not found",), ())
        copies = tuple(await self.live.copies(model_id))
        return model_status(copies, self.active_failure(record))

    def active_failure(self, record: ModelRecord) -> dict[str, Any] | None:
        return active_failure(record.last_failure, now=self.clock(), backoff_seconds=self.settings.failure_backoff_seconds)

    async def endpoints(self, copies: Sequence[CopyRecord]) -> list[Endpoint]:
        loaded = [c.pod_id for c in copies if c.state == CopyState.LOADED.value]
        if not loaded:
            return []
        await self.views.refresh()
        pods = {p.pod_id: p for p in self.views.pods(alive=False)}
        return [
            Endpoint(pod_id=p, grpc_address=pods[p].grpc_address, rest_address=pods[p].rest_address)
            for p in loaded
            if p in pods
        ]

    # -- loading ---------------------------------------------------------------------------
    async def ensure_loaded(
        self, model_id: str, *, suspect_pods: Sequence[str] = (), miss: bool = False
    ) -> tuple[ModelState, list[Endpoint]]:
        """Return the loaded copies of `model_id`, loading a first copy if there is none.

        `suspect_pods` are pods whose copy failed a caller: each is checked with its
        puller first, and a copy that is not really there is dropped (the whole pod when
        it does not answer or its model server is down). `miss`: a request found no copy
        (the router asks); a load it starts is counted for shift detection (`shift.py`),
        unlike loads for registrations, scaling or drains."""
        for pod_id in suspect_pods:
            await self.pods.check_suspect(pod_id, model_id)
        for attempt in range(ENSURE_ROUNDS):
            copies = await self.live.copies(model_id)
            if any(c.state == CopyState.LOADED.value for c in copies):
                break
            task = self._loads.get(model_id)
            if task is None:
                task = asyncio.create_task(self.loader.load_first_copy(model_id))
                self._loads[model_id] = task
                task.add_done_callback(lambda _t, m=model_id: self._loads.pop(m, None))
                if miss and attempt == 0:   # after the task is shared: concurrent callers must join it
                    await self.live.count_load()
            await asyncio.shield(task)
        else:
            copies = await self.live.copies(model_id)
        return ModelState(LOADED, (), tuple(copies)), await self.endpoints(copies)

    async def retry_load(self, model_id: str) -> tuple[ModelState, list[Endpoint]]:
        """Forget recorded failures (an admin fixed the files) and load again."""
        await self.registry.get_model(model_id)
        await self.registry.update_model(model_id, last_failure=None)
        await self.live.clear_failures(model_id)
        return await self.ensure_loaded(model_id)

    def load_in_background(self, model_id: str) -> None:
        """Start loading a first copy of `model_id`; a failure is logged, not raised."""
        self.spawn(self._ensure_quietly(model_id))

    async def load_awaiting(self) -> list[str]:
        """Start loading (in the background) each model whose load found no runtime and for
        which a compatible pod is now up (the leader, when pods registered); models no longer
        registered are forgotten. Returns the models started."""
        waiting = await self.live.awaiting_runtime()
        if not waiting:
            return []
        await self.views.refresh()
        pods = self.views.pods(alive=True)
        started = []
        for model_id in waiting:
            record = await self.registry.find_model(model_id)
            if record is None:
                await self.live.stop_awaiting(model_id)
                continue
            labels = model_labels(
                model_type=record.model_type,
                model_type_version=record.model_type_version,
                runtime=record.runtime,
                protocol_version=record.protocol_version,
            )
            if any(labels <= p.labels for p in pods):
                await self.live.stop_awaiting(model_id)
                self.load_in_background(model_id)
                started.append(model_id)
        if started:
            log.info("a runtime for %d waiting models is up: loading %s", len(started), ", ".join(started))
        return started

    async def background_done(self) -> None:
        """Return when the background loads started so far have ended (tests, shutdown)."""
        await asyncio.gather(*list(self._background), return_exceptions=True)

    def spawn(self, coro: Any) -> None:
        """Run `coro` as a background task this object keeps a reference to."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _ensure_quietly(self, model_id: str) -> None:
        try:
            await self.ensure_loaded(model_id)
        except MeshError as err:
            log.warning("background load of %s failed: %s", model_id, err.message)

    # -- unloading -------------------------------------------------------------------------
    async def unload(self, model_id: str, *, why: str = "requested by admin") -> int:
        """Unload every copy of `model_id`; the number of copies there were."""
        copies = await self.live.copies(model_id)
        for copy in copies:
            await self.unloader.unload_copy(model_id=model_id, pod_id=copy.pod_id, kind="unloaded", why=why)
        return len(copies)

    async def drop_model(self, model_id: str) -> None:
        """Unload every copy of `model_id` and remove it from the registry and live state
        (NotFound when neither knows it)."""
        record = await self.registry.find_model(model_id)
        if record is None and not await self.live.copies(model_id):
            raise NotFound(f"model {model_id!r} not found")
        await self.unload(model_id, why="model unregistered")
        self.loader.forget_prediction(model_id)
        await self.registry.delete_model(model_id)
        await self.live.remove_model(model_id)
        await self.live.clear_failures(model_id)
        await self.live.stop_awaiting(model_id)
        await self.events.record("unregistered", model_id=model_id)
