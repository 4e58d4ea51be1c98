"""Virtual models (vmodels): stable names that point at one concrete model at a time.

A vmodel has an active model (the one routes send to) and, while it moves, a target.
This module owns moving it: switching at once when nothing would be interrupted, or
loading the target in the background and flipping when it is loaded, then unregistering
the model it replaced when the vmodel auto-deletes its models. It builds on the model use
cases of `SchedulerService` (`ModelOps`) and never places or loads copies itself.

Invariants:
* a vmodel's newest target has one transition task: set again with the same target, the
  running task is kept. Tasks for earlier targets are not cancelled; each reads the
  registry again before flipping and stops when the target has moved on;
* a model is unregistered on a vmodel's behalf only after checking that no vmodel
  (active or target) still refers to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from meshserve.common.errors import AlreadyExists, MeshError, NotFound
from meshserve.common.storage import check_model_id
from meshserve.scheduler.live import LiveState
from meshserve.scheduler.registry import Registry
from meshserve.scheduler.status import LOADING_FAILED, ModelState

log = logging.getLogger(__name__)


class ModelOps(Protocol):
    """The model use cases vmodels build on (`SchedulerService` provides them)."""

    async def model_state(self, model_id: str) -> ModelState: ...

    async def ensure_loaded(self, model_id: str) -> object:
        """Return once `model_id` has a loaded copy (the result is not used here)."""
        ...

    def load_in_background(self, model_id: str) -> None: ...

    async def unregister_model(self, model_id: str) -> None: ...


class VModels:
    """Set, inspect and delete vmodels; runs their transitions in background tasks."""

    def __init__(
        self,
        *,
        registry: Registry,
        live: LiveState,
        models: ModelOps,
        event: Callable[..., Awaitable[None]],
    ) -> None:
        self.registry = registry
        self.live = live
        self._models = models
        self._event = event   # records a scheduler event, best-effort
        self._transitions: dict[str, tuple[str, asyncio.Task[None]]] = {}   # vmodel -> (target, task)

    async def set_vmodel(
        self,
        *,
        vmodel_id: str,
        target_model_id: str,
        owner: str = "",
        auto_delete: bool = False,
        force: bool = False,
        load_now: bool = True,
    ) -> None:
        """Point `vmodel_id` at `target_model_id`, without a failed request in between.

        A new vmodel, an active model with no copy, or `force` switches at once. Otherwise
        the active model keeps serving while the target loads in the background; the
        vmodel flips when the target is loaded, and the old model is unregistered if the
        vmodel auto-deletes its models. A target that fails to load leaves the vmodel on
        the active model (status TRANSITION_FAILED).
        """
        check_model_id(vmodel_id)
        existing = await self.registry.get_vmodel(vmodel_id)
        if existing is not None and owner and existing.owner and existing.owner != owner:
            raise AlreadyExists(
                f"vmodel {vmodel_id!r} already exists with owner {existing.owner!r} (asked by {owner!r})"
            )
        if await self.registry.find_model(target_model_id) is None:
            raise NotFound(f"target model {target_model_id!r} not found")
        owner = owner or (existing.owner if existing else "")
        active = existing.active_model_id if existing else ""
        if not active or active == target_model_id or force or not await self.live.copies(active):
            await self._flip_vmodel(vmodel_id, owner=owner, new=target_model_id, old=active, auto_delete=auto_delete)
            if load_now:
                self._models.load_in_background(target_model_id)
            return
        await self.registry.upsert_vmodel(
            vmodel_id=vmodel_id, owner=owner, active=active, target=target_model_id, auto_delete=auto_delete
        )
        # one transition per target: a task still running for an earlier target (still
        # loading it, or unregistering the model it replaced) sees the change and stops
        running = self._transitions.get(vmodel_id)
        if running is None or running[1].done() or running[0] != target_model_id:
            task = asyncio.create_task(self._transition(vmodel_id, target_model_id))
            self._transitions[vmodel_id] = (target_model_id, task)

    async def _flip_vmodel(self, vmodel_id: str, *, owner: str, new: str, old: str, auto_delete: bool) -> None:
        await self.registry.upsert_vmodel(vmodel_id=vmodel_id, owner=owner, active=new, target="", auto_delete=auto_delete)
        await self.live.set_vmodel(vmodel_id, new)
        if old and old != new:
            await self._event("vmodel-switched", model_id=new, message=f"vmodel {vmodel_id}: {old} -> {new}")
            if auto_delete:
                await self._unregister_if_unreferenced(old)

    async def _unregister_if_unreferenced(self, model_id: str) -> None:
        vmodels, _ = await self.registry.list_vmodels(limit=1_000_000)
        if any(model_id in (v.active_model_id, v.target_model_id) for v in vmodels):
            return
        with contextlib.suppress(NotFound):
            await self._models.unregister_model(model_id)

    async def _transition(self, vmodel_id: str, target: str) -> None:
        try:
            await self._models.ensure_loaded(target)
        except MeshError as err:
            log.info("vmodel %s: target %s did not load: %s", vmodel_id, target, err.message)
            return
        current = await self.registry.get_vmodel(vmodel_id)
        if current is None or current.target_model_id != target:
            return  # changed or deleted meanwhile
        await self._flip_vmodel(
            vmodel_id, owner=current.owner, new=target, old=current.active_model_id, auto_delete=current.auto_delete
        )

    async def vmodel_state(self, vmodel_id: str) -> tuple[str, Any, ModelState | None, ModelState | None]:
        """(status, record, active state, target state); status as ModelMesh's VModelStatus."""
        record = await self.registry.get_vmodel(vmodel_id)
        if record is None:
            return "NOT_FOUND", None, None, None
        active = await self._models.model_state(record.active_model_id)
        if not record.target_model_id or record.target_model_id == record.active_model_id:
            return "DEFINED", record, active, None
        target = await self._models.model_state(record.target_model_id)
        status = "TRANSITION_FAILED" if target.status == LOADING_FAILED else "TRANSITIONING"
        return status, record, active, target

    async def delete_vmodel(self, vmodel_id: str, *, owner: str = "") -> None:
        """Idempotent. Unregisters its models when the vmodel auto-deletes them."""
        record = await self.registry.get_vmodel(vmodel_id)
        if record is None:
            return
        if owner and record.owner and owner != record.owner:
            raise AlreadyExists(f"vmodel {vmodel_id!r} belongs to owner {record.owner!r}")
        running = self._transitions.pop(vmodel_id, None)
        if running is not None:
            running[1].cancel()
        await self.registry.delete_vmodel(vmodel_id)
        await self.live.delete_vmodel(vmodel_id)
        if record.auto_delete:
            for model in {record.active_model_id, record.target_model_id} - {""}:
                await self._unregister_if_unreferenced(model)
