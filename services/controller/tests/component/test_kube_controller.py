"""The controller's Kubernetes layer against the fake API server process and a scheduler gRPC double.

Each test: fake API server (real process) + in-process `Reconciler` with the real
kubernetes-asyncio client + the scheduler double on a real grpc.aio port (see conftest).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import NAMESPACE, FakeKube, Running, SchedulerFixture, eventually

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[4]
CORE = f"/api/v1/namespaces/{NAMESPACE}"
SERVING = f"/apis/serving.kserve.io/v1alpha1/namespaces/{NAMESPACE}"
ISVCS = f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
RUNTIME_DEPLOYMENT = f"{DEPLOYMENTS}/modelmesh-serving-mlserver-1.x"


def serving_runtime() -> dict[str, Any]:
    obj = yaml.safe_load((REPO / "deploy/kustomize/base/runtimes/mlserver-1.x.yaml").read_text())
    obj["kind"] = "ServingRuntime"
    obj["metadata"] = {"name": "mlserver-1.x"}
    return dict(obj)


def isvc(name: str, **model_overrides: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"modelFormat": {"name": "sklearn"}, "storage": {"key": "localMinIO", "path": "sklearn/mnist-svm.joblib"}}
    model.update(model_overrides)
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
        "spec": {"predictor": {"model": model}},
    }


CONFIG = "podsPerRuntime: 3\nscaleToZero:\n  enabled: true\n  gracePeriodSeconds: 1\n"
STORAGE = {"localMinIO": "eyJ0eXBlIjoiczMiLCJidWNrZXQiOiJtb2RlbHMiLCJlbmRwb2ludF91cmwiOiJodHRwOi8vbWluaW86OTAwMCJ9"}


async def setup_namespace(kube: FakeKube) -> None:
    await kube.apply(f"{CORE}/configmaps", {"metadata": {"name": "model-serving-config"}, "data": {"config.yaml": CONFIG}})
    await kube.apply(f"{CORE}/secrets", {"metadata": {"name": "storage-config"}, "data": STORAGE})
    await kube.apply(f"{SERVING}/servingruntimes", serving_runtime())


async def wait_ready(ctl: Running) -> None:
    await eventually(lambda: _true(ctl.reconciler.ready.is_set()), what="informers synced")


async def _true(value: Any) -> Any:
    return value


async def deployment_replicas(kube: FakeKube) -> int | None:
    dep = await kube.get(RUNTIME_DEPLOYMENT)
    return None if dep is None else int(dep["spec"]["replicas"])


async def test_isvc_registers_model_and_creates_runtime_deployment(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await setup_namespace(fakekube)
    await wait_ready(controller)
    await fakekube.apply(ISVCS, isvc("example-sklearn-isvc"))

    async def replicas_three() -> bool:
        return await deployment_replicas(fakekube) == 3
    await eventually(replicas_three, what="runtime Deployment with podsPerRuntime=3 replicas")
    dep = await fakekube.get(RUNTIME_DEPLOYMENT)
    assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["mlserver", "puller"]

    async def registered() -> Any:
        reqs = [r for r in scheduler.servicer.set_requests if r.vmodel_id == "example-sklearn-isvc"]
        return reqs[-1] if reqs else None
    req = await eventually(registered, what="SetVModel")
    assert req.owner == "isvc" and req.target_model_id.startswith("example-sklearn-isvc__isvc-")
    assert len(req.target_model_id.split("-")[-1]) == 10
    assert req.model_info.model_type == "sklearn"
    assert req.model_info.storage_key == "localMinIO" and req.model_info.storage_path == "sklearn/mnist-svm.joblib"
    assert req.auto_delete_target_model and req.load_now

    async def loaded() -> Any:
        obj = await fakekube.get(f"{ISVCS}/example-sklearn-isvc")
        ms = (obj.get("status") or {}).get("modelStatus") or {}
        return obj if ms.get("states", {}).get("activeModelState") == "Loaded" else None
    obj = await eventually(loaded, what="ISVC status Loaded")
    status = obj["status"]
    assert status["modelStatus"]["transitionStatus"] == "UpToDate"
    assert status["modelStatus"]["copies"] == {"failedCopies": 0, "totalCopies": 1}
    assert status["url"] == f"grpc://modelmesh-serving.{NAMESPACE}:8033"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"PredictorReady": "True", "Ready": "True"}


async def test_invalid_isvc_spec_gets_invalid_spec_status(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await setup_namespace(fakekube)
    await wait_ready(controller)
    bad = isvc("bad-isvc", storageUri="s3://models/sklearn/model.joblib")   # storageUri AND storage.path
    await fakekube.apply(ISVCS, bad)

    async def invalid() -> Any:
        obj = await fakekube.get(f"{ISVCS}/bad-isvc")
        ms = (obj.get("status") or {}).get("modelStatus") or {}
        return ms if ms.get("transitionStatus") == "InvalidSpec" else None
    ms = await eventually(invalid, what="InvalidSpec status")
    assert ms["lastFailureInfo"]["reason"] == "InvalidPredictorSpec"
    assert ms["lastFailureInfo"]["message"] == (
        f"the InferenceService {NAMESPACE}/bad-isvc cannot have both the storageUri and the storage.path"
    )
    assert ms["states"]["activeModelState"] == "Pending"
    assert not any(r.vmodel_id == "bad-isvc" for r in scheduler.servicer.set_requests)
    log = await fakekube.get("/_control/requests")
    writes = [r for r in log if r["method"] == "PATCH" and r["path"].startswith(f"{ISVCS}/bad-isvc")]
    assert writes and all(r["path"].endswith("/status") for r in writes)
    assert {r["contentType"] for r in writes} == {"application/merge-patch+json"}


async def test_invalid_serving_config_is_reported_by_event_and_previous_config_kept(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await setup_namespace(fakekube)      # podsPerRuntime: 3
    await wait_ready(controller)
    cm_path = f"{CORE}/configmaps/model-serving-config"
    bad = CONFIG.replace("podsPerRuntime: 3", 'podsPerRuntime: "two"')
    cm = await fakekube.request("PATCH", cm_path, {"data": {"config.yaml": bad}},
                                content_type="application/merge-patch+json")

    async def invalid_config() -> Any:
        return await fakekube.events(kind="ConfigMap", name="model-serving-config", reason="InvalidConfig")
    [event] = await eventually(invalid_config, what="InvalidConfig Event on the ConfigMap")
    assert event["type"] == "Warning"
    assert event["involvedObject"] == {
        "kind": "ConfigMap", "apiVersion": "v1", "name": "model-serving-config", "namespace": NAMESPACE,
        "uid": cm["metadata"]["uid"], "resourceVersion": cm["metadata"]["resourceVersion"],
    }
    assert "keeping the previous configuration" in event["message"] and "podsPerRuntime" in event["message"]
    assert event["source"] == {"component": "meshserve-controller"}
    assert event["count"] == 1 and event["firstTimestamp"] and event["lastTimestamp"]
    assert event["metadata"]["namespace"] == NAMESPACE

    # the Event is written after the rejected update was processed: an ISVC now still gets podsPerRuntime 3
    await fakekube.apply(ISVCS, isvc("after-bad-config"))

    def replicas(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await deployment_replicas(fakekube) == n
        return check
    await eventually(replicas(3), what="runtime Deployment with the previous podsPerRuntime=3")
    assert controller.reconciler.config.pods_per_runtime == 3

    # a valid update applies without a restart
    good = CONFIG.replace("podsPerRuntime: 3", "podsPerRuntime: 1")
    await fakekube.request("PATCH", cm_path, {"data": {"config.yaml": good}}, content_type="application/merge-patch+json")
    await eventually(replicas(1), what="runtime Deployment follows podsPerRuntime=1 without restart")
    assert len(await fakekube.events(kind="ConfigMap", name="model-serving-config", reason="InvalidConfig")) == 1


async def test_invalid_isvc_gets_one_invalid_spec_event_whose_count_grows(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await setup_namespace(fakekube)
    await wait_ready(controller)
    created = await fakekube.apply(ISVCS, isvc("bad-isvc", storageUri="s3://AKIAEXAMPLE:wJalrXUtnFEMI@minio:9000/models/m.joblib"))

    async def invalid_spec() -> Any:
        return await fakekube.events(kind="InferenceService", name="bad-isvc", reason="InvalidSpec")
    [event] = await eventually(invalid_spec, what="InvalidSpec Event on the InferenceService")
    assert event["type"] == "Warning"
    assert event["involvedObject"]["uid"] == created["metadata"]["uid"]
    assert event["involvedObject"]["apiVersion"] == "serving.kserve.io/v1beta1"
    assert event["message"] == f"the InferenceService {NAMESPACE}/bad-isvc cannot have both the storageUri and the storage.path"

    # each metadata change re-reconciles the invalid ISVC: the same Event's count grows, no new Events
    for i in range(1, 4):
        await fakekube.request("PATCH", f"{ISVCS}/bad-isvc", {"metadata": {"annotations": {"touch": str(i)}}},
                               content_type="application/merge-patch+json")

        async def counted(at_least: int = i + 1) -> Any:
            found = await invalid_spec()
            return found if len(found) == 1 and found[0]["count"] >= at_least else None
        await eventually(counted, what=f"InvalidSpec count >= {i + 1}")
    [event] = await invalid_spec()
    assert event["firstTimestamp"] <= event["lastTimestamp"]
    listed = await fakekube.get(f"{CORE}/events")
    assert not any("wJalrXUtnFEMI" in e["message"] for e in listed["items"])
    log = await fakekube.get("/_control/requests")
    creates = [r for r in log if r["method"] == "POST" and r["path"] == f"{CORE}/events"]
    bumps = [r for r in log if r["method"] == "PATCH" and r["path"].startswith(f"{CORE}/events/bad-isvc.")]
    assert len(creates) == len(listed["items"]) and len(bumps) >= 3
    assert {r["contentType"] for r in bumps} == {"application/merge-patch+json"}


async def test_delete_isvc_deletes_vmodel_and_scales_runtime_to_zero_after_grace(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await setup_namespace(fakekube)
    await wait_ready(controller)
    await fakekube.apply(ISVCS, isvc("doomed"))

    async def replicas_three() -> bool:
        return await deployment_replicas(fakekube) == 3
    await eventually(replicas_three, what="runtime up")
    await eventually(lambda: _true(scheduler.servicer.vmodels.get("doomed")), what="SetVModel")

    deleted_at = time.monotonic()
    await fakekube.request("DELETE", f"{ISVCS}/doomed")
    await eventually(lambda: _true(("doomed", "isvc") in scheduler.servicer.deleted), what="DeleteVModel")

    async def scaled_to_zero() -> bool:
        return await deployment_replicas(fakekube) == 0
    await eventually(scaled_to_zero, within=10, what="runtime scaled to 0")
    assert time.monotonic() - deleted_at >= 0.9, "scaled to zero before scaleToZero.gracePeriodSeconds"

    async def scaled_event() -> Any:
        return await fakekube.events(kind="ServingRuntime", name="mlserver-1.x", reason="ScaledToZero")
    [event] = await eventually(scaled_event, what="ScaledToZero Event on the ServingRuntime")
    runtime = await fakekube.get(f"{SERVING}/servingruntimes/mlserver-1.x")
    assert event["type"] == "Normal" and event["involvedObject"]["uid"] == runtime["metadata"]["uid"]
    assert event["involvedObject"]["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert "modelmesh-serving-mlserver-1.x" in event["message"]


async def test_watch_expiry_relists_and_keeps_reconciling(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await setup_namespace(fakekube)
    await wait_ready(controller)
    informer = controller.reconciler.informers["InferenceService"]
    before = informer.relists

    async def expire_open_watches() -> Any:
        # `ready` means every informer has listed; its watch request may still be on the way
        expired = await fakekube.request("POST", "/_control/expire")
        return expired["closedWatches"] >= 1
    await eventually(expire_open_watches, what="an open watch ended with 410")
    await eventually(lambda: _true(informer.relists > before), what="re-list after 410")
    await fakekube.apply(ISVCS, isvc("after-expiry"))
    await eventually(lambda: _true(scheduler.servicer.vmodels.get("after-expiry")), what="SetVModel after re-list")

    async def status_written() -> Any:
        obj = await fakekube.get(f"{ISVCS}/after-expiry")
        return (obj.get("status") or {}).get("modelStatus")
    await eventually(status_written, what="status after re-list")


async def test_api_server_restart_is_survived(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await setup_namespace(fakekube)
    await wait_ready(controller)
    await fakekube.apply(ISVCS, isvc("before-restart"))
    await eventually(lambda: _true(scheduler.servicer.vmodels.get("before-restart")), what="first SetVModel")

    await fakekube.kill()
    await fakekube.start()     # same port, same state file ("etcd" survives, watch history does not)
    await fakekube.apply(ISVCS, isvc("after-restart"))
    await eventually(lambda: _true(scheduler.servicer.vmodels.get("after-restart")), within=20,
                     what="SetVModel after API server restart")

    async def loaded() -> Any:
        obj = await fakekube.get(f"{ISVCS}/after-restart")
        ms = (obj.get("status") or {}).get("modelStatus") or {}
        return ms.get("states", {}).get("activeModelState") == "Loaded"
    await eventually(loaded, within=20, what="status after restart")
    assert await deployment_replicas(fakekube) == 3


async def test_fake_server_answers_old_resource_version_with_in_stream_410(fakekube: FakeKube) -> None:
    await fakekube.apply(f"{CORE}/configmaps", {"metadata": {"name": "a"}, "data": {}})
    await fakekube.apply(f"{CORE}/configmaps", {"metadata": {"name": "b"}, "data": {}})
    await fakekube.request("POST", "/_control/expire")    # history floor is now rv 2
    async with fakekube.http.get(f"{fakekube.url}{CORE}/configmaps?watch=1&resourceVersion=0") as r:
        first = await r.content.readline()
    assert b'"ADDED"' in first
    async with fakekube.http.get(f"{fakekube.url}{CORE}/configmaps?watch=1&resourceVersion=1&timeoutSeconds=5") as r:
        assert r.status == 200
        event = yaml.safe_load(await r.content.readline())
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    patched = await fakekube.request("PATCH", f"{CORE}/configmaps/a", [{"op": "add", "path": "/data/k", "value": "v"}],
                                     content_type="application/json-patch+json")
    assert patched["data"] == {"k": "v"}
    assert copy.deepcopy(patched)["metadata"]["resourceVersion"].isdigit()
