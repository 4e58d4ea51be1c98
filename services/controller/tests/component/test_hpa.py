"""HorizontalPodAutoscalers of runtime Deployments (Kubernetes mode) against the fake API server.

A ServingRuntime annotated `serving.kserve.io/autoscalerClass: hpa` gets an autoscaling/v2 HPA
(validated by the fake against the Kubernetes 1.32 schema, written with the controller's RBAC);
the replicas the HPA sets on the Deployment are kept; removing the class deletes the HPA; an
annotation the controller cannot follow is an `InvalidAutoscaling` Event, and nothing crashes.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshserve.controller import hpa
from meshserve.controller.worker import INVALID_AUTOSCALING

from .conftest import NAMESPACE, FakeKube, Running, SchedulerFixture, eventually
from .test_kube_controller import (
    CONFIG,
    CORE,
    ISVCS,
    RUNTIME_DEPLOYMENT,
    SERVING,
    STORAGE,
    deployment_replicas,
    isvc,
    serving_runtime,
    wait_ready,
)

pytestmark = pytest.mark.timeout(60)

RUNTIME = "mlserver-1.x"
DEPLOYMENT = "modelmesh-serving-mlserver-1.x"
HPA = f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers/{DEPLOYMENT}"
RUNTIME_PATH = f"{SERVING}/servingruntimes/{RUNTIME}"
CSRS = "/apis/serving.kserve.io/v1alpha1/clusterservingruntimes"
MERGE = "application/merge-patch+json"
ANNOTATIONS = {hpa.AUTOSCALER_CLASS_ANNOTATION: "hpa", hpa.MIN_SCALE_ANNOTATION: "2", hpa.MAX_SCALE_ANNOTATION: "5"}


async def annotate(kube: FakeKube, annotations: dict[str, str | None]) -> None:
    await kube.request("PATCH", RUNTIME_PATH, {"metadata": {"annotations": annotations}}, content_type=MERGE)


async def test_hpa_created_kept_deleted_and_an_invalid_annotation_is_an_event(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await fakekube.apply(f"{CORE}/configmaps", {"metadata": {"name": "model-serving-config"}, "data": {"config.yaml": CONFIG}})
    await fakekube.apply(f"{CORE}/secrets", {"metadata": {"name": "storage-config"}, "data": STORAGE})
    runtime = serving_runtime()
    runtime["metadata"]["annotations"] = dict(ANNOTATIONS)
    runtime["metadata"]["labels"] = {"team": "models"}
    created = await fakekube.apply(f"{SERVING}/servingruntimes", runtime)
    await wait_ready(controller)
    await fakekube.apply(ISVCS, isvc("example-sklearn-isvc"))   # in use: no scale-to-zero

    obj = await eventually(lambda: fakekube.get(HPA), what="the runtime's HPA")
    spec = obj["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 5)
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT}
    assert spec["metrics"][0]["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}
    (owner,) = obj["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("ServingRuntime", RUNTIME, created["metadata"]["uid"])
    assert obj["metadata"]["labels"]["team"] == "models"
    assert await deployment_replicas(fakekube) == 2   # a new Deployment starts at min-scale, not podsPerRuntime (3)

    # the HPA scales the Deployment to 4: the controller keeps it on its next reconciles
    await fakekube.request("PATCH", RUNTIME_DEPLOYMENT, {"spec": {"replicas": 4}}, content_type=MERGE)
    informer = controller.reconciler.informers["Deployment"]

    async def seen_four() -> bool:
        dep = informer.get(NAMESPACE, DEPLOYMENT)
        return dep is not None and dep["spec"]["replicas"] == 4
    await eventually(seen_four, what="the controller's view of the Deployment at 4 replicas")
    await annotate(fakekube, {hpa.MAX_SCALE_ANNOTATION: "6"})   # a reconcile that must change the HPA only

    async def max_six() -> Any:
        found = await fakekube.get(HPA)
        return found if found and found["spec"]["maxReplicas"] == 6 else None
    await eventually(max_six, what="the HPA replaced with max-scale 6")
    assert await deployment_replicas(fakekube) == 4

    # no autoscaler class: the HPA is deleted and the planned replicas (podsPerRuntime) come back
    await annotate(fakekube, {hpa.AUTOSCALER_CLASS_ANNOTATION: None})

    async def hpa_gone() -> bool:
        return await fakekube.get(HPA) is None
    await eventually(hpa_gone, what="the HPA deleted")

    async def planned_three() -> bool:
        return await deployment_replicas(fakekube) == 3
    await eventually(planned_three, what="podsPerRuntime replicas without the HPA")

    # an invalid annotation: an Event naming it, no HPA, the controller still running
    await annotate(fakekube, {hpa.AUTOSCALER_CLASS_ANNOTATION: "hpa", hpa.TARGET_UTILIZATION_ANNOTATION: "150"})

    async def invalid_event() -> Any:
        return await fakekube.events(kind="ServingRuntime", name=RUNTIME, reason=INVALID_AUTOSCALING)
    (event,) = await eventually(invalid_event, what="InvalidAutoscaling Event")
    assert event["type"] == "Warning"
    assert hpa.TARGET_UTILIZATION_ANNOTATION in event["message"] and "150" in event["message"]
    assert await fakekube.get(HPA) is None
    assert not controller.task.done()
    assert await deployment_replicas(fakekube) == 3

    # fixed again: the HPA comes back
    await annotate(fakekube, {hpa.TARGET_UTILIZATION_ANNOTATION: "60"})

    async def target_sixty() -> Any:
        found = await fakekube.get(HPA)
        return found if found and found["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60 else None
    await eventually(target_sixty, what="the HPA with target 60")


async def test_hpa_of_a_deleted_runtime_is_deleted(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await fakekube.apply(f"{CORE}/configmaps", {"metadata": {"name": "model-serving-config"}, "data": {"config.yaml": CONFIG}})
    await fakekube.apply(f"{CORE}/secrets", {"metadata": {"name": "storage-config"}, "data": STORAGE})
    runtime = serving_runtime()
    runtime["metadata"]["annotations"] = dict(ANNOTATIONS)
    await fakekube.apply(f"{SERVING}/servingruntimes", runtime)
    await wait_ready(controller)
    await fakekube.apply(ISVCS, isvc("example-sklearn-isvc"))
    await eventually(lambda: fakekube.get(HPA), what="the runtime's HPA")
    await fakekube.request("DELETE", RUNTIME_PATH)   # the fake has no garbage collector: the controller deletes it

    async def gone() -> bool:
        return await fakekube.get(HPA) is None and await fakekube.get(RUNTIME_DEPLOYMENT) is None
    await eventually(gone, what="the Deployment and its HPA deleted")


async def test_hpa_of_a_cluster_serving_runtime_is_owned_by_it_and_its_bad_annotation_is_an_event_on_it(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await fakekube.apply(f"{CORE}/configmaps", {"metadata": {"name": "model-serving-config"}, "data": {"config.yaml": CONFIG}})
    await fakekube.apply(f"{CORE}/secrets", {"metadata": {"name": "storage-config"}, "data": STORAGE})
    runtime = serving_runtime()
    runtime["kind"] = "ClusterServingRuntime"
    runtime["metadata"]["annotations"] = dict(ANNOTATIONS)
    created = await fakekube.apply(CSRS, runtime)
    await wait_ready(controller)
    await fakekube.apply(ISVCS, isvc("example-sklearn-isvc"))
    obj = await eventually(lambda: fakekube.get(HPA), what="the runtime's HPA")
    (owner,) = obj["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("ClusterServingRuntime", RUNTIME, created["metadata"]["uid"])
    assert (obj["spec"]["minReplicas"], obj["spec"]["maxReplicas"]) == (2, 5)

    await fakekube.request("PATCH", f"{CSRS}/{RUNTIME}", {"metadata": {"annotations": {hpa.METRICS_ANNOTATION: "gpu"}}},
                           content_type=MERGE)

    async def invalid_event() -> Any:
        return await fakekube.events(kind="ClusterServingRuntime", name=RUNTIME, reason=INVALID_AUTOSCALING)
    (event,) = await eventually(invalid_event, what="InvalidAutoscaling Event on the ClusterServingRuntime")
    assert hpa.METRICS_ANNOTATION in event["message"]
    left = await fakekube.get(HPA)   # an annotation it cannot follow leaves the HPA as it was
    assert left is not None and left["spec"]["maxReplicas"] == 5
    assert not controller.task.done()


async def test_hpa_is_deleted_when_its_runtime_scales_to_zero_and_comes_back_with_use(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await fakekube.apply(f"{CORE}/configmaps", {"metadata": {"name": "model-serving-config"}, "data": {"config.yaml": CONFIG}})
    await fakekube.apply(f"{CORE}/secrets", {"metadata": {"name": "storage-config"}, "data": STORAGE})
    runtime = serving_runtime()
    runtime["metadata"]["annotations"] = dict(ANNOTATIONS)
    await fakekube.apply(f"{SERVING}/servingruntimes", runtime)
    await wait_ready(controller)
    await fakekube.apply(ISVCS, isvc("example-sklearn-isvc"))
    await eventually(lambda: fakekube.get(HPA), what="the runtime's HPA")
    await fakekube.request("DELETE", f"{ISVCS}/example-sklearn-isvc")   # unused: 0 after the 1 s grace period

    async def zero_without_hpa() -> bool:
        return await deployment_replicas(fakekube) == 0 and await fakekube.get(HPA) is None
    await eventually(zero_without_hpa, what="the Deployment at 0 and its HPA deleted")

    await fakekube.apply(ISVCS, isvc("example-sklearn-isvc"))

    async def back() -> bool:
        return await deployment_replicas(fakekube) == 2 and await fakekube.get(HPA) is not None
    await eventually(back, what="the Deployment back at min-scale with its HPA")
