"""local.AutoscaledRuntimes over a stand-in scheduler admin API on a real socket (aiohttp): the
plan's replicas clamped to the runtime's bounds, the plan seeing its own replicas back, UP
after churn, DOWN only after the newest pod was drained, scale-to-zero and DELETE passing
through, a bad annotation leaving the runtime fixed, and an unreachable scheduler not fatal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from meshserve.controller.autoscale import Action
from meshserve.controller.kube import KubeError
from meshserve.controller.local import (
    AdminApi,
    AutoscaledRuntimes,
    LocalResourceApi,
    RecordingRuntimes,
    autoscaled,
)
from meshserve.controller.reconcile import ActionKind, DeploymentAction
from meshserve.controller.settings import ControllerSettings

DEP, RT = "modelmesh-serving-rt", "rt"
SETTINGS = ControllerSettings(
    mode="local", autoscale_interval_seconds=1, autoscale_pressure_window_seconds=10, autoscale_up_evicted_fraction=0.5,
    autoscale_up_window_seconds=5, autoscale_down_idle_seconds=30, autoscale_down_window_seconds=5,
    autoscale_cooldown_seconds=10,
)


@dataclass
class Scheduler:
    """What the stand-in answers, and what it was asked."""

    annotations: dict[str, str] = field(default_factory=lambda: {"serving.kserve.io/min-scale": "1",
                                                                 "serving.kserve.io/max-scale": "3"})
    pods: list[dict[str, Any]] = field(default_factory=list)
    evicted_per_minute: float = 0.0
    lru: float | None = None
    drained: list[str] = field(default_factory=list)
    drain_status: int = 200
    pressure_status: int = 200


@pytest.fixture
async def scheduler() -> AsyncIterator[tuple[Scheduler, str]]:
    state = Scheduler()

    async def runtime(request: web.Request) -> web.Response:
        if request.match_info["name"] != RT:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response({"kind": "ServingRuntime", "metadata": {
            "name": RT, "namespace": "default", "annotations": state.annotations}, "spec": {"multiModel": True}})

    async def cluster_runtime(request: web.Request) -> web.Response:
        return web.json_response({"error": "not found"}, status=404)

    async def pressure(request: web.Request) -> web.Response:
        if state.pressure_status != 200:
            return web.json_response({"error": "down"}, status=state.pressure_status)
        return web.json_response({
            "runtime": request.match_info["name"], "windowSeconds": float(request.query["windowSeconds"]),
            "pods": state.pods, "evictedBytesPerMinute": state.evicted_per_minute, "lruCopyAgeSeconds": state.lru,
        })

    async def drain(request: web.Request) -> web.Response:
        pod = request.match_info["pod"]
        state.drained.append(pod)
        if state.drain_status != 200:
            return web.json_response({"error": "no"}, status=state.drain_status)
        return web.json_response({"pod": pod, "moved": ["m"], "unloaded": []})

    app = web.Application()
    app.router.add_get("/v1/resources/ServingRuntime/default/{name}", runtime)
    app.router.add_get("/v1/resources/ClusterServingRuntime/_/{name}", cluster_runtime)
    app.router.add_get("/v1/runtimes/{name}/pressure", pressure)
    app.router.add_post("/v1/pods/{pod}:drain", drain)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pods(n: int, *, capacity: int = 1000) -> list[dict[str, Any]]:
    return [{"id": f"{DEP}-{i}", "capacityBytes": capacity, "draining": False} for i in range(n)]


@pytest.fixture
async def backend(scheduler: tuple[Scheduler, str]) -> AsyncIterator[tuple[AutoscaledRuntimes, RecordingRuntimes, Clock]]:
    _, url = scheduler
    inner, clock = RecordingRuntimes(), Clock()
    wrapped = AutoscaledRuntimes(inner, resources=LocalResourceApi(url), admin=AdminApi(url), namespace="default",
                                 settings=SETTINGS, clock=clock)
    wrapped._task = object()  # type: ignore[assignment]   # the test drives `tick` itself: no loop
    yield wrapped, inner, clock
    wrapped._task = None
    await wrapped.close()


def create(replicas: int = 2) -> DeploymentAction:
    return DeploymentAction(ActionKind.CREATE, DEP, RT, replicas, {"metadata": {"annotations": {"meshserve.io/spec-hash": "h"}}})


async def run_for(wrapped: AutoscaledRuntimes, clock: Clock, seconds: float) -> list[Action | str]:
    """One tick a second, as `run` does; a tick's error is kept as its status (the loop logs it)."""
    actions: list[Action | str] = []
    for _ in range(int(seconds)):
        clock.now += 1
        try:
            decision = await wrapped.tick(DEP)
        except KubeError as err:
            actions.append(f"error {err.status}")
            continue
        assert decision is not None
        actions.append(decision.action)
    return actions


async def test_a_new_deployment_starts_at_min_and_the_plan_sees_its_own_replicas(backend: Any) -> None:
    wrapped, inner, _ = backend
    await wrapped.apply(create(2), namespace="default")
    assert inner.observed()[DEP].replicas == 1            # min-scale 1
    assert wrapped.observed()[DEP].replicas == 2          # the plan's 2: no SCALE fight
    await wrapped.apply(DeploymentAction(ActionKind.SCALE, DEP, RT, 5), namespace="default")
    assert inner.observed()[DEP].replicas == 1            # still clamped: autoscaled count kept


async def test_churn_adds_a_pod_after_the_window_and_not_beyond_max(backend: Any, scheduler: Any) -> None:
    wrapped, inner, clock = backend
    state, _ = scheduler
    await wrapped.apply(create(2), namespace="default")
    state.pods, state.evicted_per_minute, state.lru = pods(1), 600.0, 1.0   # >= 0.5 x 1000 bytes/min
    actions = await run_for(wrapped, clock, 6)   # readings a second apart; the 5 s window needs six
    assert actions == [Action.HOLD] * 5 + [Action.UP]
    assert inner.observed()[DEP].replicas == 2
    # the new pod is not in the scheduler yet: no reading is kept, nothing decided on it
    assert set(await run_for(wrapped, clock, 30)) == {Action.HOLD}
    state.pods = pods(2)
    assert Action.UP in await run_for(wrapped, clock, 30)
    state.pods = pods(3)
    assert set(await run_for(wrapped, clock, 30)) == {Action.HOLD}   # at max-scale 3
    assert inner.observed()[DEP].replicas == 3 and state.drained == []


async def test_idleness_drains_the_newest_pod_before_removing_it(backend: Any, scheduler: Any) -> None:
    wrapped, inner, clock = backend
    state, _ = scheduler
    state.annotations = {"serving.kserve.io/min-scale": "1", "serving.kserve.io/max-scale": "3"}
    await wrapped.apply(create(3), namespace="default")   # planned 3 -> starts at min 1; make it 3 by hand
    wrapped.scaled[DEP].current = 3
    state.pods = pods(3)
    state.evicted_per_minute, state.lru = 0.0, 31.0
    actions = await run_for(wrapped, clock, 20)
    assert Action.DOWN in actions
    assert state.drained == [f"{DEP}-2"]                   # the newest, as the supervisor stops it
    assert inner.observed()[DEP].replicas == 2
    # a failed drain (not 404) stops nothing: the tick fails, the pod stays, and the next
    # ticks retry the drain of that same pod (now draining: out of the serving pods)
    state.pods, state.drain_status = pods(2), 500
    actions = await run_for(wrapped, clock, 20)
    assert "error 500" in actions
    assert inner.observed()[DEP].replicas == 2 and state.drained[-1] == f"{DEP}-1"
    state.pods = [{**pods(2)[0]}, {**pods(2)[1], "draining": True}]
    failed = len(state.drained)
    assert "error 500" in await run_for(wrapped, clock, 1)
    assert state.drained[failed:] == [f"{DEP}-1"]
    state.drain_status = 200
    assert await run_for(wrapped, clock, 1) == [Action.DOWN]
    assert inner.observed()[DEP].replicas == 1 and state.drained[-1] == f"{DEP}-1"
    assert not wrapped.scaled[DEP].draining


async def test_a_pod_the_scheduler_no_longer_knows_is_simply_stopped(backend: Any, scheduler: Any) -> None:
    wrapped, inner, clock = backend
    state, _ = scheduler
    await wrapped.apply(create(3), namespace="default")
    wrapped.scaled[DEP].current = 2
    state.pods, state.evicted_per_minute, state.lru, state.drain_status = pods(2), 0.0, None, 404
    assert Action.DOWN in await run_for(wrapped, clock, 20)
    assert inner.observed()[DEP].replicas == 1


async def test_a_pod_not_serving_yet_holds_every_decision(backend: Any, scheduler: Any) -> None:
    wrapped, _, clock = backend
    state, _ = scheduler
    await wrapped.apply(create(3), namespace="default")
    wrapped.scaled[DEP].current = 2
    state.pods, state.lru = pods(1), 999.0   # the scheduler knows one of the two pods
    assert set(await run_for(wrapped, clock, 30)) == {Action.HOLD} and state.drained == []
    assert wrapped.scaled[DEP].samples == []


async def test_scale_to_zero_and_delete_pass_through_and_reset(backend: Any, scheduler: Any) -> None:
    wrapped, inner, _ = backend
    await wrapped.apply(create(2), namespace="default")
    await wrapped.apply(DeploymentAction(ActionKind.SCALE, DEP, RT, 0), namespace="default")
    assert inner.observed()[DEP].replicas == 0 and DEP not in wrapped.scaled
    assert await wrapped.tick(DEP) is None
    await wrapped.apply(DeploymentAction(ActionKind.SCALE, DEP, RT, 2), namespace="default")
    assert inner.observed()[DEP].replicas == 1            # back at min, not at the old count
    await wrapped.apply(DeploymentAction(ActionKind.DELETE, DEP, RT), namespace="default")
    assert DEP not in inner.observed() and DEP not in wrapped.observed()


async def test_a_bad_annotation_keeps_the_planned_replicas(backend: Any, scheduler: Any) -> None:
    wrapped, inner, clock = backend
    state, _ = scheduler
    state.annotations = {"serving.kserve.io/min-scale": "3", "serving.kserve.io/max-scale": "1"}
    await wrapped.apply(create(2), namespace="default")
    assert inner.observed()[DEP].replicas == 2
    assert "max-scale" in wrapped.scaled[DEP].problem
    state.pods, state.evicted_per_minute = pods(2), 1e9
    assert set(await run_for(wrapped, clock, 30)) == {Action.HOLD}


async def test_an_unreachable_scheduler_is_an_error_of_the_tick_not_of_the_loop(backend: Any, scheduler: Any) -> None:
    wrapped, _, _ = backend
    state, _ = scheduler
    await wrapped.apply(create(2), namespace="default")
    state.pressure_status = 503
    with pytest.raises(KubeError) as err:
        await wrapped.tick(DEP)
    assert err.value.status == 503 and "down" in str(err.value)


def test_autoscaled_wraps_once_and_only_when_on() -> None:
    inner = RecordingRuntimes()
    assert autoscaled(inner, settings=SETTINGS.model_copy(update={"autoscale": False})) is inner
    once = autoscaled(inner, settings=SETTINGS)
    assert isinstance(once, AutoscaledRuntimes) and autoscaled(once, settings=SETTINGS) is once
