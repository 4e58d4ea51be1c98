"""Kubernetes mode's model-pressure autoscaler against the fake API server (RBAC and schemas
enforced) and a double of the scheduler's admin API over real HTTP.

The double answers `GET /v1/runtimes/{name}/pressure` with the scheduler's own response model
(`meshserve.scheduler.api.RuntimePressure`, serialized as the scheduler does) and records
`POST /v1/pods/{id}:drain`, marking the pod draining as the scheduler does; the real scheduler
needs Redis and Postgres and pods that report (the local-mode test over the whole stack is
tests/integration/test_autoscale_local.py). The fake has no ReplicaSet controller, so the test
plays it: it creates a Pod (and the double lists it) when the replicas grow, and deletes the
pod annotated with the lowest `pod-deletion-cost` when they shrink.

A runtime annotated `min-scale: 1`, `max-scale: 3`: churn adds pods one at a time up to 3 and
never beyond; no pressure removes them one at a time, each drained first (the pod holding the
fewest bytes), marked for deletion, down to 1 and never below; an HPA of the Deployment's name
stops the autoscaler; the reconciler never scales the Deployment back to its planned count.
Every wait polls a condition with a bound."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from meshserve.controller import hpa
from meshserve.controller.kube_autoscale import (
    DELETION_COST_ANNOTATION,
    DRAINED_DELETION_COST,
    PressureOptions,
    SchedulerAdmin,
)
from meshserve.scheduler.api import PodPressureView, RuntimePressure

from .conftest import NAMESPACE, FakeKube, Running, SchedulerFixture, eventually, running_controller
from .test_kube_controller import (
    CORE,
    RUNTIME_DEPLOYMENT,
    deployment_replicas,
    isvc,
    setup_namespace,
    wait_ready,
)

pytestmark = pytest.mark.timeout(90)

RUNTIME = "mlserver-1.x"
DEPLOYMENT = "modelmesh-serving-mlserver-1.x"
HPA_PATH = f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers"
SERVING = f"/apis/serving.kserve.io/v1alpha1/namespaces/{NAMESPACE}"
ISVCS = f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices"
MERGE = "application/merge-patch+json"
CAPACITY = 1000
OPTIONS = PressureOptions(
    interval_seconds=0.1, pressure_window_seconds=0.5, up_evicted_fraction=0.5, up_window_seconds=0.3,
    down_idle_seconds=10.0, down_window_seconds=0.3, cooldown_seconds=0.3,
)


@dataclass
class AdminDouble:
    """The scheduler admin API's pressure and drain routes, over what the test sets."""

    pods: dict[str, int] = field(default_factory=dict)
    """pod id -> bytes its copies hold."""
    draining: set[str] = field(default_factory=set)
    drained: list[str] = field(default_factory=list)
    churn: bool = False
    reads: int = 0
    url: str = ""

    async def pressure(self, request: web.Request) -> web.Response:
        self.reads += 1
        assert request.match_info["name"] == RUNTIME
        window = float(request.query.get("windowSeconds", "60"))
        answer = RuntimePressure(
            runtime=RUNTIME, window_seconds=window, measured_at=dt.datetime.now(dt.UTC),
            pods=[PodPressureView(id=p, capacity_bytes=CAPACITY, allocated_bytes=b, draining=p in self.draining,
                                  loaded_copies=1 if b else 0, lru_copy_age_seconds=1.0 if self.churn else 100.0)
                  for p, b in sorted(self.pods.items())],
            capacity_bytes=CAPACITY * len(self.pods), allocated_bytes=sum(self.pods.values()),
            evictions=10 if self.churn else 0, evicted_bytes=10 * CAPACITY if self.churn else 0,
            evicted_bytes_per_minute=60.0 * CAPACITY if self.churn else 0.0,
            lru_copy_age_seconds=1.0 if self.churn else 100.0,
        )
        return web.json_response(answer.model_dump(mode="json", by_alias=True))

    async def drain(self, request: web.Request) -> web.Response:
        pod = request.match_info["pod"]
        if pod not in self.pods:
            return web.json_response({"detail": "pod not found"}, status=404)
        self.drained.append(pod)
        self.draining.add(pod)
        return web.json_response({"pod": pod, "moved": [], "unloaded": []})


@pytest.fixture
async def admin() -> AsyncIterator[AdminDouble]:
    double = AdminDouble()
    app = web.Application()
    app.router.add_get("/v1/runtimes/{name}/pressure", double.pressure)
    app.router.add_post("/v1/pods/{pod}:drain", double.drain)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    double.url = f"http://127.0.0.1:{port}"
    try:
        yield double
    finally:
        await runner.cleanup()


def pod_manifest(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"name": DEPLOYMENT, "modelmesh-service": "modelmesh-serving"}},
            "spec": {"containers": [{"name": "mlserver", "image": "x"}]}}


async def add_pod(kube: FakeKube, admin: AdminDouble, name: str, held: int) -> None:
    """What the ReplicaSet and the pod's puller do for one more replica."""
    await kube.apply(f"{CORE}/pods", pod_manifest(name))
    admin.pods[name] = held


async def remove_marked_pod(kube: FakeKube, admin: AdminDouble) -> str:
    """What the ReplicaSet does for one replica less: delete the pod of the lowest deletion cost."""
    listed = await kube.get(f"{CORE}/pods")
    costs = {p["metadata"]["name"]: int((p["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION, "0"))
             for p in listed["items"]}
    victim = min(costs, key=lambda n: costs[n])
    await kube.request("DELETE", f"{CORE}/pods/{victim}")
    admin.pods.pop(victim)
    admin.draining.discard(victim)
    return victim


async def replicas_are(kube: FakeKube, n: int) -> bool:
    return await deployment_replicas(kube) == n


async def hpa_read_three_times(kube: FakeKube) -> None:
    """Wait until the controller read the Deployment's HPA three more times."""
    seen = len(await kube.get("/_control/requests"))

    async def read() -> bool:
        log = (await kube.get("/_control/requests"))[seen:]
        return sum(1 for r in log if r["method"] == "GET" and r["path"] == f"{HPA_PATH}/{DEPLOYMENT}") >= 3
    await eventually(read, what="the autoscaler reading the HPA")


async def more_reads(admin: AdminDouble, count: int) -> None:
    """Wait until the autoscaler read the pressure `count` more times (it decided that often)."""
    start = admin.reads

    async def read() -> bool:
        return admin.reads >= start + count
    await eventually(read, what=f"{count} more pressure reads")


async def test_pressure_scales_the_runtime_deployment_up_and_down_within_its_bounds(
    fakekube: FakeKube, scheduler: SchedulerFixture, admin: AdminDouble
) -> None:
    client = SchedulerAdmin(admin.url)
    async with running_controller(fakekube, scheduler, pressure=OPTIONS, pressure_admin=client) as ctl:
        await run_scenario(fakekube, admin, ctl)
    await client.close()


async def run_scenario(kube: FakeKube, admin: AdminDouble, ctl: Running) -> None:
    await setup_namespace(kube)
    await kube.request("PATCH", f"{SERVING}/servingruntimes/{RUNTIME}", {"metadata": {"annotations": {
        hpa.MIN_SCALE_ANNOTATION: "1", hpa.MAX_SCALE_ANNOTATION: "3"}}}, content_type=MERGE)
    await wait_ready(ctl)
    await kube.apply(ISVCS, isvc("example-sklearn-isvc"))   # in use: no scale-to-zero
    # a new Deployment starts at min-scale (podsPerRuntime is 3)
    await eventually(lambda: replicas_are(kube, 1), what="the runtime Deployment at min-scale")
    await add_pod(kube, admin, "pod-a", 300)
    await more_reads(admin, 3)
    assert await deployment_replicas(kube) == 1 and admin.drained == []   # no pressure at min: holds

    # churn: one pod at a time, each added only once the previous one serves
    admin.churn = True
    await eventually(lambda: replicas_are(kube, 2), what="scaled up to 2")
    await more_reads(admin, 10)
    assert await deployment_replicas(kube) == 2, "no second step before the new pod serves"
    await add_pod(kube, admin, "pod-b", 100)
    await eventually(lambda: replicas_are(kube, 3), what="scaled up to 3")
    await add_pod(kube, admin, "pod-c", 200)
    await more_reads(admin, 10)
    assert await deployment_replicas(kube) == 3, "never above max-scale"

    # no pressure: drained first (the pod holding the fewest bytes), marked, then one replica less
    admin.churn = False
    await eventually(lambda: replicas_are(kube, 2), what="scaled down to 2")
    assert admin.drained == ["pod-b"]
    marked = await kube.get(f"{CORE}/pods/pod-b")
    assert marked["metadata"]["annotations"][DELETION_COST_ANNOTATION] == DRAINED_DELETION_COST
    assert await remove_marked_pod(kube, admin) == "pod-b"
    await eventually(lambda: replicas_are(kube, 1), what="scaled down to 1")
    assert admin.drained == ["pod-b", "pod-c"]
    assert await remove_marked_pod(kube, admin) == "pod-c"
    await more_reads(admin, 10)
    assert await deployment_replicas(kube) == 1 and admin.drained == ["pod-b", "pod-c"], "never below min-scale"

    # the reconciler keeps the autoscaler's count: a spec change re-renders the Deployment
    await kube.request("PATCH", f"{SERVING}/servingruntimes/{RUNTIME}", {"metadata": {"annotations": {
        hpa.MAX_SCALE_ANNOTATION: "2"}}}, content_type=MERGE)
    admin.churn = True
    await eventually(lambda: replicas_are(kube, 2), what="scaled up to the new max-scale")
    await add_pod(kube, admin, "pod-d", 50)
    await more_reads(admin, 10)
    assert await deployment_replicas(kube) == 2

    # an HPA of the Deployment's name (a user's): the autoscaler leaves the Deployment alone
    await kube.apply(HPA_PATH, {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": DEPLOYMENT},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT},
                 "minReplicas": 1, "maxReplicas": 2},
    })
    admin.churn = False
    await hpa_read_three_times(kube)
    reads = admin.reads
    await hpa_read_three_times(kube)
    assert await deployment_replicas(kube) == 2 and admin.drained == ["pod-b", "pod-c"]
    assert admin.reads <= reads + 1, "no pressure read while an HPA scales the Deployment"
    dep = await kube.get(RUNTIME_DEPLOYMENT)
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelmesh-controller"
