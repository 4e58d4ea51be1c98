"""A pod that stops heartbeating, as the leader sees it (real Redis + Postgres, pods'
management ends on real sockets: `standin_pullers`).

Its heartbeat is made late by writing an older `heartbeat_ms` into its hash (the state a
pod that stopped reporting leaves), so nothing waits for the clock. A late pod is probed:
a refused connection is a dead pod, dropped at once, well before `pod_timeout_seconds`; a
pod that accepts the connection and never answers is hung, dropped only once its heartbeat
is `pod_unresponsive_seconds` old; a pod that answers is left alone. A dropped pod's copies
are re-placed by the leader, and a dropped pod that comes back keeps only the copies that
were not re-placed meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from meshserve.scheduler.service import ModelSpec, SchedulerService
from meshserve.scheduler.store.live import now_ms
from meshserve.scheduler.store.migrate import upgrade

from .standin_pullers import MIB, dead_address, hung_address, pod_fields, stand_in_puller

ServiceFactory = Callable[..., AbstractAsyncContextManager[SchedulerService]]


@pytest.fixture(autouse=True)
async def _forget_models(service: SchedulerService, prefix: str) -> AsyncIterator[None]:
    """The database is the session's: the models registered here are removed after each test."""
    yield
    for model_id in await service.registry.all_model_ids():
        if model_id.startswith(prefix):
            await service.registry.delete_model(model_id)


async def _late(service: SchedulerService, pod_id: str, seconds: float) -> None:
    """The pod's last heartbeat `seconds` ago."""
    await service.live.redis.hset(service.live.k_pod(pod_id), "heartbeat_ms", now_ms() - int(seconds * 1000))


async def _register(service: SchedulerService, *model_ids: str) -> None:
    for model_id in model_ids:
        await service.register_model(ModelSpec(model_id=model_id, model_type="sklearn", storage_uri="s3://b/m.joblib"))


async def _pods(service: SchedulerService) -> set[str]:
    return set(await service.live.pod_ids())


async def test_a_late_pod_is_dropped_when_dead_kept_when_answering_and_dropped_later_when_hung(
    service: SchedulerService, prefix: str
) -> None:
    s = service.settings
    assert s.pod_probe_after_seconds < s.pod_unresponsive_seconds < s.pod_timeout_seconds
    runtime = f"{prefix}-rt"
    late = (s.pod_probe_after_seconds + s.pod_unresponsive_seconds) / 2   # probed, not yet unresponsive
    async with stand_in_puller() as alive:
        with hung_address() as hung:
            for pod_id, address in (("dead", dead_address()), ("hung", hung), ("alive", alive.address)):
                await service.pods.report_pod(pod_fields(f"{prefix}-{pod_id}", runtime=runtime, management_address=address), [])
                await _late(service, f"{prefix}-{pod_id}", late)
            assert await service.pods.remove_dead_pods() == [f"{prefix}-dead"]
            assert await _pods(service) == {f"{prefix}-hung", f"{prefix}-alive"}
            events = await service.registry.list_events(pod_id=f"{prefix}-dead", kinds=["pod-lost"])
            assert events and "its puller: UNAVAILABLE" in events[0].message

            await _late(service, f"{prefix}-hung", s.pod_unresponsive_seconds + 0.5)
            await _late(service, f"{prefix}-alive", s.pod_unresponsive_seconds + 0.5)
            assert await service.pods.remove_dead_pods() == [f"{prefix}-hung"]
            assert await _pods(service) == {f"{prefix}-alive"}
            # one that answers is given the whole timeout
            await _late(service, f"{prefix}-alive", s.pod_timeout_seconds + 0.5)
            assert await service.pods.remove_dead_pods() == [f"{prefix}-alive"]


async def test_a_pod_a_router_reports_is_dropped_when_hung_with_a_late_heartbeat_kept_while_it_heartbeats(
    service: SchedulerService, prefix: str
) -> None:
    """A router asks about a pod whose copy has not answered a request (`check_suspect`): a
    puller that does not answer the probe is a hung pod only while its heartbeat is late too
    (a busy puller that heartbeats on time is kept: a slow model's request asks this often);
    then it is dropped at once, before the leader's `pod_unresponsive_seconds`."""
    s = service.settings
    runtime, pod_id = f"{prefix}-rt", f"{prefix}-stopped"
    with hung_address() as hung:
        await service.pods.report_pod(pod_fields(pod_id, runtime=runtime, management_address=hung), [])
        await service.pods.check_suspect(pod_id, f"{prefix}-m")
        assert pod_id in await _pods(service)   # heartbeat on time: not hung, whatever the probe says
        await _late(service, pod_id, s.pod_probe_after_seconds + 0.5)
        assert s.pod_probe_after_seconds + 0.5 < s.pod_unresponsive_seconds   # the leader would keep it still
        await service.pods.check_suspect(pod_id, f"{prefix}-m")
        assert pod_id not in await _pods(service)
    events = await service.registry.list_events(pod_id=pod_id, kinds=["pod-lost"])
    assert events and "reported by a router" in events[0].message and "did not answer" in events[0].message


async def test_the_copies_of_a_dead_pod_are_re_placed_by_the_leader(service: SchedulerService, prefix: str) -> None:
    runtime = f"{prefix}-rt"
    used, unused = f"{prefix}-used", f"{prefix}-unused"
    await _register(service, used, unused)
    async with stand_in_puller() as other:
        await service.pods.report_pod(pod_fields(f"{prefix}-a", runtime=runtime, management_address=dead_address()), [used, unused])
        await service.pods.report_pod(pod_fields(f"{prefix}-b", runtime=runtime, management_address=other.address), [])
        # requests in the last minute (the scaler's rate window ends at the current 10 s bucket)
        await service.live.redis.hset(f"{prefix}:rate:{used}", str(now_ms() // 10_000 - 1), 30)
        await _late(service, f"{prefix}-a", service.settings.pod_probe_after_seconds + 0.5)
        assert await service.pods.remove_dead_pods() == [f"{prefix}-a"]
        await service.housekeeping()
        await service.scaler.replacing_done()
        # the model that was asked for is loaded again at once; the other waits for a request
        assert other.loads == [used]
        assert {c.pod_id for c in await service.live.copies(used)} == {f"{prefix}-b"}
        assert await service.live.copies(unused) == []
        assert await service.live.lost_models() == []


async def test_a_lost_copy_is_not_re_placed_where_it_would_evict(
    make_service: ServiceFactory, database_url: str, prefix: str
) -> None:
    """On a full cluster re-placing every lost copy would only churn: the requests' own loads
    decide there (they may evict); the leader's pass places where there is room."""
    runtime = f"{prefix}-rt"
    lost, resident = f"{prefix}-lost", f"{prefix}-resident"
    async with make_service(database_url, min_residency_seconds=0) as service, stand_in_puller(size=MIB) as full:
        await _register(service, lost, resident)
        await service.pods.report_pod(pod_fields(f"{prefix}-a", runtime=runtime, management_address=dead_address()), [lost])
        fields = pod_fields(f"{prefix}-b", runtime=runtime, management_address=full.address, capacity=MIB + MIB // 2)
        await service.pods.report_pod(fields, [resident])   # adopted at the runtime default: 3 MiB, over capacity
        await service.live.redis.hset(f"{prefix}:rate:{lost}", str(now_ms() // 10_000 - 1), 30)
        await _late(service, f"{prefix}-a", service.settings.pod_probe_after_seconds + 0.5)
        assert await service.pods.remove_dead_pods() == [f"{prefix}-a"]
        assert await service.scaler.replace_lost() == []
        assert full.loads == [] and full.unloads == []
        assert set(await service.live.pod_allocations(f"{prefix}-b")) == {resident}


async def test_a_dropped_pod_that_comes_back_keeps_only_the_copies_not_re_placed(service: SchedulerService, prefix: str) -> None:
    runtime = f"{prefix}-rt"
    moved, stayed = f"{prefix}-moved", f"{prefix}-stayed"
    await _register(service, moved, stayed)
    async with stand_in_puller() as hung_pod, stand_in_puller() as other:
        a, b = f"{prefix}-a", f"{prefix}-b"
        await service.pods.report_pod(pod_fields(a, runtime=runtime, management_address=hung_pod.address), [moved, stayed])
        await _late(service, a, service.settings.pod_timeout_seconds + 1)
        assert await service.pods.remove_dead_pods() == [a]
        # meanwhile one of its models was loaded on another pod
        await service.pods.report_pod(pod_fields(b, runtime=runtime, management_address=other.address), [moved])
        # the pod resumes and reports what it still holds
        await service.pods.report_pod(pod_fields(a, runtime=runtime, management_address=hung_pod.address), [moved, stayed])
        assert {c.pod_id for c in await service.live.copies(moved)} == {b}
        assert {c.pod_id for c in await service.live.copies(stayed)} == {a}
        await service.pods.unloads_done()
        assert hung_pod.unloads == [moved]
        # its next report, sent before the unload was done, does not bring the duplicate back
        await service.pods.report_pod(pod_fields(a, runtime=runtime, management_address=hung_pod.address), [moved, stayed])
        assert {c.pod_id for c in await service.live.copies(moved)} == {b}
        assert set(await service.live.pod_allocations(a)) == {stayed}


async def test_after_a_redis_loss_every_reported_copy_is_adopted(service: SchedulerService, prefix: str) -> None:
    """A pod new to live state that was not dropped (Redis lost its data) keeps all it holds,
    even a model another pod holds too (two copies of a hot model are no duplicate)."""
    runtime = f"{prefix}-rt"
    hot = f"{prefix}-hot"
    await _register(service, hot)
    async with stand_in_puller() as a_puller, stand_in_puller() as b_puller:
        for pod_id, puller in ((f"{prefix}-a", a_puller), (f"{prefix}-b", b_puller)):
            await service.pods.report_pod(pod_fields(pod_id, runtime=runtime, management_address=puller.address), [hot])
        await service.pods.unloads_done()
        assert {c.pod_id for c in await service.live.copies(hot)} == {f"{prefix}-a", f"{prefix}-b"}
        assert a_puller.unloads == b_puller.unloads == []


async def test_a_model_registered_before_its_runtime_had_a_pod_loads_when_one_registers(
    make_service: ServiceFactory, database_url: str, prefix: str
) -> None:
    """An InferenceService applied before its runtime has a pod: the background load finds no
    running instance and gives up; when a pod of that runtime registers, the leader loads it."""
    upgrade(database_url)
    async with make_service(database_url, runtime_wait_seconds=0) as service:
        model = f"{prefix}-early"
        await service.register_model(
            ModelSpec(model_id=model, model_type="sklearn", runtime=f"{prefix}-rt", storage_uri="s3://b/m.joblib"), load_now=True
        )
        await service.copies.background_done()
        assert await service.live.copies(model) == []
        assert await service.live.awaiting_runtime() == [model]
        await service.housekeeping()   # no pod yet: nothing to do
        async with stand_in_puller() as other_runtime, stand_in_puller() as puller:
            # a pod of another runtime does not take it
            await service.pods.report_pod(
                pod_fields(f"{prefix}-x", runtime=f"{prefix}-other", management_address=other_runtime.address), []
            )
            await service.housekeeping()
            await service.copies.background_done()
            assert other_runtime.loads == [] and await service.live.awaiting_runtime() == [model]
            await service.pods.report_pod(pod_fields(f"{prefix}-a", runtime=f"{prefix}-rt", management_address=puller.address), [])
            await service.housekeeping()
            await service.copies.background_done()
            assert puller.loads == [model]
            assert [(c.pod_id, c.state) for c in await service.live.copies(model)] == [(f"{prefix}-a", "loaded")]
            assert await service.live.awaiting_runtime() == []


async def test_a_load_whose_scheduler_replica_died_leaves_no_reservation(service: SchedulerService, prefix: str) -> None:
    """A replica reserved copies and died before settling them (SIGKILL mid-load): once older
    than any live load can be, the pod's heartbeat settles the one it holds and releases the
    one it does not; a load still within its time is left to its replica."""
    runtime, pod = f"{prefix}-rt", f"{prefix}-a"
    finished, never, recent = f"{prefix}-finished", f"{prefix}-never", f"{prefix}-recent"
    await _register(service, finished, never, recent)
    async with stand_in_puller() as puller:
        fields = pod_fields(pod, runtime=runtime, management_address=puller.address, max_loading=3)
        await service.pods.report_pod(fields, [])
        for model in (finished, never, recent):
            assert (await service.live.reserve(model_id=model, pod_id=pod, size=1 << 20, exclusive=True))[0]
        long_ago = now_ms() - int((service.settings.load_timeout_seconds + 60) * 1000)
        for model in (finished, never):   # reserved by the dead replica long ago
            await service.live.redis.hset(service.live.k_copies(model), pod, f"loading:{long_ago}")
        await service.pods.report_pod(fields, [finished])
        assert [(c.pod_id, c.state) for c in await service.live.copies(finished)] == [(pod, "loaded")]
        assert await service.live.copies(never) == []
        assert [c.state for c in await service.live.copies(recent)] == ["loading"]
        info = await service.live.pod(pod)
        assert info is not None and info.loading == 1 and info.allocated == 2 << 20
        assert set(await service.live.pod_allocations(pod)) == {finished, recent}
