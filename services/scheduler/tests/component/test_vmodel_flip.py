"""A vmodel flip keeps the model it replaced registered for a grace period (real Redis +
Postgres, no pods: the active model has no copy, so the vmodel flips at once).

Envoy may already have routed a request to the old model id when the vmodel flips; that
request falls over to the router's slow path with the old id and must find it registered.
The replaced model is unregistered by a scheduled task once the grace has passed (and
only when nothing points at it then). Time is driven by the grace itself: a grace far
longer than the test keeps the model, a zero grace retires it once the task has run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from meshserve.common.storage import check_model_id
from meshserve.scheduler.service import ModelSpec, SchedulerService
from meshserve.scheduler.store.migrate import upgrade

ServiceFactory = Callable[..., AbstractAsyncContextManager[SchedulerService]]
LONG = 3600.0


async def _register(service: SchedulerService, *model_ids: str) -> None:
    for model_id in model_ids:
        await service.register_model(ModelSpec(model_id=check_model_id(model_id), model_type="sklearn", storage_uri="s3://b/m.joblib"))


async def _registered(service: SchedulerService, model_id: str) -> bool:
    in_registry = await service.registry.find_model(model_id) is not None
    in_mirror = model_id in await service.live.model_ids()
    assert in_registry == in_mirror
    return in_registry


async def _flip(service: SchedulerService, **vmodel: Any) -> None:
    await service.vmodels.set_vmodel(owner="isvc", auto_delete=True, load_now=False, **vmodel)


async def test_the_replaced_model_stays_registered_until_the_grace_ends(make_service: ServiceFactory, database_url: str) -> None:
    upgrade(database_url)
    async with make_service(database_url, vmodel_retire_grace_seconds=LONG) as service:
        await _register(service, "flip-old", "flip-new")
        await _flip(service, vmodel_id="flip-vm", target_model_id="flip-old")
        await _flip(service, vmodel_id="flip-vm", target_model_id="flip-new")
        record = await service.registry.get_vmodel("flip-vm")
        assert record is not None and record.active_model_id == "flip-new"
        assert await _registered(service, "flip-old")
        assert service.vmodels.pending_retirements() == ["flip-old"]
        # shutting down does not wait for the grace, nor leave the model behind
        await service.vmodels.close()
        assert not await _registered(service, "flip-old")
        assert await _registered(service, "flip-new")


async def test_a_zero_grace_retires_the_model_in_its_task(make_service: ServiceFactory, database_url: str) -> None:
    upgrade(database_url)
    async with make_service(database_url, vmodel_retire_grace_seconds=0.0) as service:
        await _register(service, "zero-old", "zero-new")
        await _flip(service, vmodel_id="zero-vm", target_model_id="zero-old")
        await _flip(service, vmodel_id="zero-vm", target_model_id="zero-new")
        # the flip returned before the retirement ran: never in the request path
        assert await _registered(service, "zero-old")
        await service.vmodels.retirements_done()
        assert not await _registered(service, "zero-old")
        assert service.vmodels.pending_retirements() == []


async def test_a_model_pointed_at_again_within_the_grace_is_kept(make_service: ServiceFactory, database_url: str) -> None:
    upgrade(database_url)
    async with make_service(database_url, vmodel_retire_grace_seconds=LONG) as service:
        await _register(service, "again-old", "again-new")
        await _flip(service, vmodel_id="again-vm", target_model_id="again-old")
        await _flip(service, vmodel_id="again-vm", target_model_id="again-new")
        await _flip(service, vmodel_id="again-vm2", target_model_id="again-old")
        assert service.vmodels.pending_retirements() == ["again-old"]
        await service.vmodels.close()   # the grace ends: the check is made now, not at the flip
        assert await _registered(service, "again-old")


async def test_a_retirement_pending_in_a_killed_scheduler_is_run_by_the_next_leader(
    make_service: ServiceFactory, database_url: str
) -> None:
    """The replica that flipped dies during the grace (its task is lost with it); the
    retirement's registry row lets another replica's leader duty unregister the model once
    due, and only then."""
    upgrade(database_url)
    async with make_service(database_url, vmodel_retire_grace_seconds=LONG) as flipper:
        await _register(flipper, "killed-old", "killed-new")
        await _flip(flipper, vmodel_id="killed-vm", target_model_id="killed-old")
        await _flip(flipper, vmodel_id="killed-vm", target_model_id="killed-new")
        pending = await flipper.registry.pending_retirements()
        assert set(pending) == {"killed-old"}
        # another replica, with none of the flipper's tasks (as after a SIGKILL of it)
        async with make_service(database_url, vmodel_retire_grace_seconds=LONG) as leader:
            assert await leader.vmodels.retire_due() == []   # not due yet
            assert await _registered(leader, "killed-old")
            later = pending["killed-old"] + dt.timedelta(seconds=1)
            assert await leader.vmodels.retire_due(now=later) == ["killed-old"]
            assert not await _registered(leader, "killed-old")
            assert await _registered(leader, "killed-new")
            assert await leader.registry.pending_retirements() == {}
        # the flipper's own task, when it runs, finds nothing left to do
        await flipper.vmodels.close()
        assert await flipper.registry.pending_retirements() == {}


async def test_a_retirement_is_forgotten_once_its_task_ran(make_service: ServiceFactory, database_url: str) -> None:
    upgrade(database_url)
    async with make_service(database_url, vmodel_retire_grace_seconds=0.0) as service:
        await _register(service, "ran-old", "ran-new")
        await _flip(service, vmodel_id="ran-vm", target_model_id="ran-old")
        await _flip(service, vmodel_id="ran-vm", target_model_id="ran-new")
        await service.vmodels.retirements_done()
        assert "ran-old" not in await service.registry.pending_retirements()


async def test_the_expected_target_is_checked_on_the_row_the_write_locks(make_service: ServiceFactory, database_url: str) -> None:
    """SetVModel's expected target is checked in the transaction that writes the vmodel, on its
    row locked (`FOR UPDATE`): a call made while another transaction holds the row waits for it,
    then sees what that transaction wrote (here: another target) and is refused. A check made on
    an earlier read would have passed and overwritten the other write."""
    import asyncio
    import time

    import pytest
    from sqlalchemy import text

    from meshserve.common.errors import FailedPrecondition

    upgrade(database_url)
    async with make_service(database_url, vmodel_retire_grace_seconds=LONG) as service:
        await _register(service, "lock-start", "lock-other", "lock-mine")
        await _flip(service, vmodel_id="lock-vm", target_model_id="lock-start")
        engine = service.registry.engine
        async with engine.connect() as holder, engine.connect() as watcher:
            held = await holder.begin()
            await holder.execute(text("SELECT 1 FROM vmodels WHERE id = 'lock-vm' FOR UPDATE"))
            call = asyncio.create_task(
                _flip(service, vmodel_id="lock-vm", target_model_id="lock-mine", expected_target_model_id="lock-start")
            )
            deadline = time.monotonic() + 30
            while True:   # Postgres says the call waits for the row lock: nothing to await but asking it
                waiting = (await watcher.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                ))).scalar_one()
                await watcher.commit()
                if waiting or call.done():
                    break
                assert time.monotonic() < deadline, "the call never waited for the row lock"
                await asyncio.sleep(0.02)
            assert not call.done(), call   # it did not write past the lock
            await holder.execute(text("UPDATE vmodels SET active_model_id = 'lock-other' WHERE id = 'lock-vm'"))
            await held.commit()
            with pytest.raises(FailedPrecondition, match="Existing target model lock-other does not match expected lock-start"):
                await asyncio.wait_for(call, 30)
        record = await service.registry.get_vmodel("lock-vm")
        assert record is not None and record.active_model_id == "lock-other"
        await service.vmodels.close()


async def test_update_only_and_an_expected_target_for_a_vmodel_that_does_not_exist(make_service: ServiceFactory, database_url: str) -> None:
    import pytest

    from meshserve.common.errors import FailedPrecondition, NotFound

    upgrade(database_url)
    async with make_service(database_url, vmodel_retire_grace_seconds=LONG) as service:
        await _register(service, "absent-t")
        with pytest.raises(NotFound, match="vmodel absent-vm not found"):
            await _flip(service, vmodel_id="absent-vm", target_model_id="absent-t", update_only=True)
        with pytest.raises(FailedPrecondition, match="vmodel absent-vm not found"):
            await _flip(service, vmodel_id="absent-vm", target_model_id="absent-t", expected_target_model_id="other")
        assert await service.registry.get_vmodel("absent-vm") is None
        await _flip(service, vmodel_id="absent-vm", target_model_id="absent-t", expected_target_model_id="absent-t")
        assert await service.registry.get_vmodel("absent-vm") is not None
        await service.vmodels.close()
