"""Kubernetes mode's model-pressure autoscaler of runtime Deployments (local mode's is
`local.AutoscaledRuntimes`, where a pod is a process).

Which runtimes: those `hpa.pressure_bounds` scales: no `serving.kserve.io/autoscalerClass`
(an HPA owns those), valid `min-scale` / `max-scale` annotations with min < max (missing ones:
the planned replicas, as in local mode), planned replicas > 0; and only while their runtime
Deployment exists, is the controller's and runs at least one replica, and no
HorizontalPodAutoscaler (ours or a user's) of the Deployment's name exists: an HPA is never
fought.

Every `interval_seconds`, per such Deployment: read the runtime's pressure from the scheduler
(`GET /v1/runtimes/{runtime id}/pressure`, the id the pods register with: `<ns>__<name>` in
cluster scope), keep the readings, and follow `autoscale.decide` with the Deployment's
`spec.replicas` as the current count:
* UP: merge-patch the Deployment's `spec.replicas` to the decision's target (never above max);
* DOWN: pick the pod (`autoscale.pick_victim` over the pods the scheduler lists), drain it
  (`POST /v1/pods/{id}:drain`: its copies are re-placed first; a pod the scheduler no longer
  knows, 404, has nothing to move), set its `controller.kubernetes.io/pod-deletion-cost`
  annotation to the lowest value (so the ReplicaSet deletes that pod and no other), then
  merge-patch `spec.replicas` one lower (never below min). A failure between the drain and
  the patch is retried at the next tick on the same pod, before anything else; a pod whose Pod
  object is gone (404) stops the scale-down (the ReplicaSet would remove an undrained one).
* A reading where the scheduler lists fewer serving pods than the Deployment's replicas (a pod
  starting, leaving or drained by hand) is not kept and nothing is decided on it.
The pod id the scheduler knows is the pod's name (`MESHSERVE_PULLER_POD_ID` from
`metadata.name`), in the Deployment's namespace.

The replicas the reconciler writes follow `hpa.pressure_replicas` (the reconciler is planned
with `pressure=True`), so the plan keeps what this loop set; the loop's writes take the
namespace's runtime lock (`RuntimesView.runtimes_lock`) so a reconcile never writes replicas
computed before one of them.

A failure (scheduler or API server unreachable, a refused write) is logged and retried next
tick; it never stops the controller. May import the adapters (`kube`, `local`'s admin client)
and the pure modules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from meshserve.controller import deployments as deploy
from meshserve.controller import hpa as autoscaling
from meshserve.controller.autoscale import (
    Action,
    Decision,
    Policy,
    RuntimePressure,
    Sample,
    decide,
    parse_pressure,
    pick_victim,
    prune,
)
from meshserve.controller.kinds import DEPLOYMENT, HORIZONTAL_POD_AUTOSCALER, ResourceKind
from meshserve.controller.kube import JSON, KubeApi, KubeError
from meshserve.controller.local import AdminApi
from meshserve.controller.runtimes import Runtime
from meshserve.controller.scope import Scope
from meshserve.controller.serving_config import ServingConfig
from meshserve.controller.watched import observed_deployment
from meshserve.controller.watcher import Informer

log = logging.getLogger(__name__)

POD = ResourceKind("Pod", "", "v1", "pods")
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
DRAINED_DELETION_COST = str(-(2**31))
"""The lowest int32: the ReplicaSet removes this pod before any other ready pod."""


@dataclass(frozen=True)
class PressureOptions:
    """The autoscaler's timing and thresholds (the `autoscale_*` controller settings)."""

    interval_seconds: float = 10.0
    pressure_window_seconds: float = 60.0
    up_evicted_fraction: float = 0.5
    up_window_seconds: float = 120.0
    down_idle_seconds: float = 300.0
    down_window_seconds: float = 600.0
    cooldown_seconds: float = 300.0

    @classmethod
    def from_settings(cls, s: Any) -> PressureOptions:
        return cls(
            interval_seconds=float(s.autoscale_interval_seconds),
            pressure_window_seconds=float(s.autoscale_pressure_window_seconds),
            up_evicted_fraction=float(s.autoscale_up_evicted_fraction),
            up_window_seconds=float(s.autoscale_up_window_seconds),
            down_idle_seconds=float(s.autoscale_down_idle_seconds),
            down_window_seconds=float(s.autoscale_down_window_seconds),
            cooldown_seconds=float(s.autoscale_cooldown_seconds),
        )

    def policy(self, bounds: autoscaling.ScaleBounds, *, pod_capacity: int) -> Policy:
        return Policy(
            min_pods=bounds.min_replicas, max_pods=bounds.max_replicas,
            up_evicted_bytes_per_minute=max(1.0, self.up_evicted_fraction * pod_capacity),
            up_window_seconds=self.up_window_seconds, down_idle_seconds=self.down_idle_seconds,
            down_window_seconds=self.down_window_seconds, cooldown_seconds=self.cooldown_seconds,
        )


class SchedulerAdmin(AdminApi):
    """The scheduler admin client (`local.AdminApi`: drain) with the full pressure answer."""

    async def runtime_pressure(self, runtime: str, *, window_seconds: float) -> RuntimePressure:
        body = await self._json("GET", f"/v1/runtimes/{quote(runtime, safe='')}/pressure",
                                params={"windowSeconds": str(window_seconds)})
        return parse_pressure(body, window_seconds=window_seconds)


class RuntimesView(Protocol):
    """What the autoscaler reads of the reconciler (`worker.Reconciler` is one)."""

    config: ServingConfig
    scope: Scope
    informers: dict[str, Informer]

    def served_namespaces(self) -> list[str]: ...

    def runtimes(self, namespace: str | None = None) -> dict[str, Runtime]: ...

    def runtimes_lock(self, namespace: str) -> asyncio.Lock: ...


@dataclass
class _State:
    """What the autoscaler keeps per runtime Deployment."""

    samples: list[Sample] = field(default_factory=list)
    last_change: float | None = None
    draining: str = ""
    """A pod this autoscaler drained for a scale-down that has not been written yet."""


class KubeAutoscaler:
    """The loop of the module docstring over a `RuntimesView`."""

    def __init__(
        self, *, api: KubeApi, admin: SchedulerAdmin, view: RuntimesView, options: PressureOptions,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api = api
        self.admin = admin
        self.view = view
        self.options = options
        self.clock = clock
        self._sleep = sleep
        self.state: dict[tuple[str, str], _State] = {}
        """(namespace, Deployment name) -> its readings and last change."""

    async def run(self) -> None:
        """Forever (cancel to stop)."""
        while True:
            await self.tick_all()
            await self._sleep(self.options.interval_seconds)

    def candidates(self) -> list[tuple[str, Runtime, str, autoscaling.ScaleBounds]]:
        """(namespace, runtime, Deployment name, bounds) of every runtime scaled now (see the
        module docstring; the HPA check is `tick`'s, it needs a request)."""
        found: list[tuple[str, Runtime, str, autoscaling.ScaleBounds]] = []
        config = self.view.config
        deployments = self.view.informers[DEPLOYMENT.kind]
        for ns in self.view.served_namespaces():
            for name, rt in sorted(self.view.runtimes(ns).items()):
                planned = rt.replicas if rt.replicas is not None else config.pods_per_runtime
                bounds = autoscaling.pressure_bounds(rt, planned=planned)
                dep_name = deploy.deployment_name(config, name)
                obj = deployments.get(ns, dep_name)
                if bounds is None or obj is None:
                    continue
                seen = observed_deployment(obj)
                if seen.managed and seen.replicas > 0:
                    found.append((ns, rt, dep_name, bounds))
        return found

    async def tick_all(self) -> dict[tuple[str, str], Decision | None]:
        """One look at every candidate; forgets the state of Deployments no longer scaled."""
        decisions: dict[tuple[str, str], Decision | None] = {}
        for ns, rt, dep_name, bounds in self.candidates():
            try:
                decisions[(ns, dep_name)] = await self.tick(ns, rt, dep_name, bounds)
            except (KubeError, ValueError) as err:
                decisions[(ns, dep_name)] = None
                log.warning("autoscaler: runtime %s in %s: %s", rt.name, ns, err)
        for key in set(self.state) - set(decisions):
            del self.state[key]
        return decisions

    def _replicas(self, namespace: str, dep_name: str) -> int:
        obj = self.view.informers[DEPLOYMENT.kind].get(namespace, dep_name)
        return observed_deployment(obj).replicas if obj is not None else 0

    async def tick(self, namespace: str, rt: Runtime, dep_name: str, bounds: autoscaling.ScaleBounds) -> Decision | None:
        """Read, decide, act for one runtime Deployment. Returns the decision (None: skipped)."""
        if await self.api.get(HORIZONTAL_POD_AUTOSCALER, namespace=namespace, name=dep_name) is not None:
            self.state.pop((namespace, dep_name), None)
            return None   # an HPA scales this Deployment: never fight it
        state = self.state.setdefault((namespace, dep_name), _State())
        runtime_id = f"{self.view.scope.prefix(namespace)}{rt.name}"
        reading = await self.admin.runtime_pressure(runtime_id, window_seconds=self.options.pressure_window_seconds)
        now = self.clock()
        current = self._replicas(namespace, dep_name)
        policy = self.options.policy(bounds, pod_capacity=reading.pod_capacity_bytes)
        state.samples = prune(state.samples, now=now, policy=policy)
        if state.draining:
            decision = Decision(Action.DOWN, current - 1, f"finishing the scale-down of drained pod {state.draining}")
        elif reading.serving < min(current, bounds.max_replicas):
            return Decision(Action.HOLD, current, f"{reading.serving} of {current} pod(s) serving")
        else:
            state.samples.append(Sample(
                at=now, window_seconds=reading.window_seconds, evicted_bytes_per_minute=reading.evicted_bytes_per_minute,
                lru_copy_age_seconds=reading.lru_copy_age_seconds,
            ))
            decision = decide(state.samples, current=current, policy=policy, now=now, last_change=state.last_change)
        if decision.action is Action.HOLD:
            return decision
        target = bounds.clamp(decision.target)
        if target == current:
            state.draining = ""
            return Decision(Action.HOLD, current, f"{decision.reason}; already at {current}")
        if decision.action is Action.DOWN:
            victim = state.draining or pick_victim(reading.pods) or ""
            if victim:
                state.draining = victim
                if not await self._drain(namespace, victim, reason=decision.reason):
                    state.draining = ""
                    return Decision(Action.HOLD, current, f"pod {victim} is gone; deciding again on the next reading")
        async with self.view.runtimes_lock(namespace):
            written = await self.api.merge_patch(DEPLOYMENT, namespace=namespace, name=dep_name,
                                                 patch={"spec": {"replicas": target}})
            self.view.informers[DEPLOYMENT.kind].observe(written)
        state.last_change, state.draining = self.clock(), ""
        log.info("autoscaler: runtime %s in %s scaled %s to %d pod(s): %s", rt.name, namespace, decision.action.value,
                 target, decision.reason)
        return Decision(decision.action, target, decision.reason)

    async def _drain(self, namespace: str, pod: str, *, reason: str) -> bool:
        """Drain `pod` at the scheduler, then mark it the ReplicaSet's first to delete; False
        when the Pod does not exist (the ReplicaSet would then remove another, undrained one)."""
        log.info("autoscaler: draining pod %s/%s before removing it (%s)", namespace, pod, reason)
        try:
            result: JSON = await self.admin.drain(pod)
        except KubeError as err:
            if err.status != 404:   # gone from the scheduler already: nothing to move
                raise
        else:
            log.info("autoscaler: pod %s drained: moved %s, unloaded %s", pod, result.get("moved") or [],
                     result.get("unloaded") or [])
        try:
            await self.api.merge_patch(POD, namespace=namespace, name=pod,
                                       patch={"metadata": {"annotations": {DELETION_COST_ANNOTATION: DRAINED_DELETION_COST}}})
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def close(self) -> None:
        await self.admin.close()
