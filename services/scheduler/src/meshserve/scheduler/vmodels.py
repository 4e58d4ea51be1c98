"""Virtual models (vmodels): stable names that point at one concrete model at a time.

A vmodel has an active model (the one routes send to) and, while it moves, a target.
This module owns moving it: switching at once when nothing would be interrupted, or
loading the target in the background and flipping when it is loaded, then unregistering
the model it replaced when the vmodel auto-deletes its models. That unregistration waits
`retire_grace_seconds` (a scheduled task, never the request path): Envoy may already
have routed a request to the old model id, and when that request falls over to the
router's slow path it asks for the old id, which must still be registered then. The
pending retirement is also a registry row (`model_retirements`, with its due time), so a
scheduler killed during the grace does not leave the model registered forever: the
leader retires the due rows (`retire_due`, a leader duty). It builds on `copies.Copies`
(load, state, drop a model) and never places or loads copies itself.

Invariants:
* a vmodel's newest target has one transition task: set again with the same target, the
  running task is kept. Tasks for earlier targets are not cancelled; each reads the
  registry again before flipping and stops when the target has moved on;
* a model is unregistered on a vmodel's behalf only after checking that no vmodel
  (active or target) still refers to it, checked when the grace ends, not at the flip;
* one retirement task per replaced model; `close` runs the pending ones at once, so
  a shutdown leaves no replaced model registered;
* a retirement's row is written before its task sleeps and deleted once it has run (the
  model unregistered, or kept because something refers to it again); a row left by a
  replica that died is run by the leader when due. With Postgres down the row is not
  written (logged) and the task alone retires the model.

May import: `meshserve.common`, the store wing, `copies`, `events`, `status`. Never
imports `service` or the transports (`service.SchedulerService.set_vmodel`, the use case
the transports call, registers a missing target first and then calls this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from meshserve.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    MeshError,
    NotFound,
    Unavailable,
)
from meshserve.common.storage import check_model_id
from meshserve.scheduler.copies import Copies
from meshserve.scheduler.events import EventLog
from meshserve.scheduler.models import VModelRecord
from meshserve.scheduler.status import LOADING_FAILED, ModelState
from meshserve.scheduler.store.live import LiveState
from meshserve.scheduler.store.registry import Registry

log = logging.getLogger(__name__)



def vmodel_guard(
    vmodel_id: str, target: str, *, owner: str = "", update_only: bool = False, expected_target: str = ""
) -> Callable[[VModelRecord | None], None]:
    """SetVModel's preconditions on the vmodel as it is (None: not registered), raising with
    upstream ModelMesh's codes and texts: `update_only` needs it to exist; `expected_target`
    must be its target (or the one asked for); a different owner may not take it over."""

    def check(current: VModelRecord | None) -> None:
        if current is None:
            if update_only:
                raise NotFound(f"vmodel {vmodel_id} not found")
            if expected_target and expected_target != target:
                raise FailedPrecondition(f"vmodel {vmodel_id} not found")
            return
        if owner and current.owner and current.owner != owner:
            raise AlreadyExists(f"vmodel {vmodel_id!r} already exists with owner {current.owner!r} (asked by {owner!r})")
        now = current.target_model_id or current.active_model_id
        if expected_target and expected_target != now and target != now:
            raise FailedPrecondition(f"Existing target model {now} does not match expected {expected_target}")

    return check


class VModels:
    """Set, inspect and delete vmodels; runs their transitions in background tasks."""

    def __init__(
        self,
        *,
        registry: Registry,
        live: LiveState,
        copies: Copies,
        events: EventLog,
        retire_grace_seconds: float = 0.0,
    ) -> None:
        self.registry = registry
        self.live = live
        self.copies = copies
        self.events = events
        self._transitions: dict[str, tuple[str, asyncio.Task[None]]] = {}   # vmodel -> (target, task)
        self._retire_grace = retire_grace_seconds
        self._retirements: dict[str, asyncio.Task[None]] = {}   # replaced model -> its retirement

    def pending_retirements(self) -> list[str]:
        """The replaced models whose unregistration waits for the grace to end."""
        return sorted(m for m, t in self._retirements.items() if not t.done())

    async def retirements_done(self) -> None:
        """Return when the retirements scheduled so far have run (tests, shutdown)."""
        await asyncio.gather(*list(self._retirements.values()), return_exceptions=True)

    async def close(self) -> None:
        """Run the pending retirements now instead of after their grace."""
        self._retire_grace = 0.0
        for model_id, task in list(self._retirements.items()):
            if not task.done():
                task.cancel()
                self._retirements[model_id] = asyncio.create_task(self._retire(model_id))
        await self.retirements_done()

    async def set_vmodel(
        self,
        *,
        vmodel_id: str,
        target_model_id: str,
        owner: str = "",
        auto_delete: bool = False,
        force: bool = False,
        load_now: bool = True,
        update_only: bool = False,
        expected_target_model_id: str = "",
    ) -> None:
        """Point `vmodel_id` at `target_model_id`, without a failed request in between.

        Preconditions (`vmodel_guard`: owner, `update_only`, `expected_target_model_id`) are
        checked on the vmodel's row inside the transaction that writes it.

        A new vmodel, an active model with no copy, or `force` switches at once. Otherwise
        the active model keeps serving while the target loads in the background; the
        vmodel flips when the target is loaded, and the old model is unregistered if the
        vmodel auto-deletes its models. A target that fails to load leaves the vmodel on
        the active model (status TRANSITION_FAILED).
        """
        check_model_id(vmodel_id)
        guard = vmodel_guard(
            vmodel_id, target_model_id, owner=owner, update_only=update_only, expected_target=expected_target_model_id
        )
        existing = await self.registry.get_vmodel(vmodel_id)
        guard(existing)   # early, before anything is looked up; again when the row is written
        if await self.registry.find_model(target_model_id) is None:
            raise NotFound(f"target model {target_model_id!r} not found")
        owner = owner or (existing.owner if existing else "")
        active = existing.active_model_id if existing else ""
        if not active or active == target_model_id or force or not await self.live.copies(active):
            await self._flip_vmodel(
                vmodel_id, owner=owner, new=target_model_id, old=active, auto_delete=auto_delete, guard=guard
            )
            if load_now:
                self.copies.load_in_background(target_model_id)
            return
        await self.registry.upsert_vmodel(
            vmodel_id=vmodel_id, owner=owner, active=active, target=target_model_id, auto_delete=auto_delete, guard=guard
        )
        # one transition per target: a task still running for an earlier target (still
        # loading it, or unregistering the model it replaced) sees the change and stops
        running = self._transitions.get(vmodel_id)
        if running is None or running[1].done() or running[0] != target_model_id:
            task = asyncio.create_task(self._transition(vmodel_id, target_model_id))
            self._transitions[vmodel_id] = (target_model_id, task)

    async def _flip_vmodel(
        self, vmodel_id: str, *, owner: str, new: str, old: str, auto_delete: bool,
        guard: Callable[[VModelRecord | None], None] | None = None,
    ) -> None:
        await self.registry.upsert_vmodel(
            vmodel_id=vmodel_id, owner=owner, active=new, target="", auto_delete=auto_delete, guard=guard
        )
        await self.live.set_vmodel(vmodel_id, new)
        if old and old != new:
            await self.events.record("vmodel-switched", model_id=new, message=f"vmodel {vmodel_id}: {old} -> {new}")
            if auto_delete:
                await self._retire_later(old)

    async def _retire_later(self, model_id: str) -> None:
        """Unregister `model_id` (replaced by a flip) once the grace has passed, in a task
        of its own, its row written first; a second flip away from it meanwhile keeps the
        first task (and the first row's time)."""
        running = self._retirements.get(model_id)
        if running is not None and not running.done():
            return
        due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._retire_grace)
        try:
            await self.registry.schedule_retirement(model_id, due_at=due)
        except Unavailable as err:
            log.warning("retirement of %s not persisted (a restart during the grace keeps it registered): %s", model_id, err.message)
        task = asyncio.create_task(self._retire(model_id), name=f"retire {model_id}")
        self._retirements[model_id] = task
        task.add_done_callback(lambda t: self._retired(model_id, t))

    def _retired(self, model_id: str, task: asyncio.Task[None]) -> None:
        if self._retirements.get(model_id) is task:
            del self._retirements[model_id]

    async def _retire(self, model_id: str) -> None:
        if self._retire_grace > 0:
            await asyncio.sleep(self._retire_grace)
        try:
            await self._unregister_if_unreferenced(model_id)
            await self.registry.delete_retirement(model_id)
        except MeshError as err:   # Postgres or Redis down: the row stays, the leader retries
            log.warning("replaced model %s not unregistered: %s", model_id, err.message)

    async def retire_due(self, *, now: dt.datetime | None = None) -> list[str]:
        """Leader duty: run the retirements whose grace has ended by `now` (default: the
        clock) and whose task is not running in this replica: those of a replica that died.
        Returns the models handled (unregistered, or kept because something refers to them)."""
        due = await self.registry.due_retirements(now=now or dt.datetime.now(dt.UTC))
        done = []
        for model_id in due:
            running = self._retirements.get(model_id)
            if running is not None and not running.done():
                continue   # this replica's own task runs it
            await self._unregister_if_unreferenced(model_id)
            await self.registry.delete_retirement(model_id)
            done.append(model_id)
        if done:
            log.info("retired %d replaced models left by an earlier scheduler: %s", len(done), ", ".join(done))
        return done

    async def _unregister_if_unreferenced(self, model_id: str) -> None:
        vmodels, _ = await self.registry.list_vmodels(limit=1_000_000)
        if any(model_id in (v.active_model_id, v.target_model_id) for v in vmodels):
            return
        with contextlib.suppress(NotFound):
            await self.copies.drop_model(model_id)

    async def _transition(self, vmodel_id: str, target: str) -> None:
        try:
            await self.copies.ensure_loaded(target)
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
        active = await self.copies.model_state(record.active_model_id)
        if not record.target_model_id or record.target_model_id == record.active_model_id:
            return "DEFINED", record, active, None
        target = await self.copies.model_state(record.target_model_id)
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
