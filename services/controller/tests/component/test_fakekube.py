"""The fake API server enforces what a real one does (so the controller's tests can trust it).

Each test drives the fake process over HTTP: as the test harness (no token: a cluster admin) or
as the controller (its ServiceAccount's token, authorized by the RBAC of deploy/kustomize).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import (
    CONTROLLER_TOKEN,
    CONTROLLER_USER,
    KUSTOMIZATION,
    NAMESPACE,
    SERVER,
    FakeKube,
    checked,
    eventually,
    fakekube_at,
    free_port,
)
from .test_kube_controller import CORE, ISVCS, SERVING, isvc, serving_runtime

pytestmark = pytest.mark.timeout(60)

MERGE = "application/merge-patch+json"
PREDICTORS = f"{SERVING}/predictors"
DEPLOYMENT = {"metadata": {"name": "d"}, "spec": {
    "selector": {"matchLabels": {"app": "d"}},
    "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
}}


async def call(kube: FakeKube, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
               token: str | None = None) -> tuple[int, Any, Any]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body)
    async with kube.http.request(method, kube.url + path, data=data, headers=headers) as r:
        return r.status, await r.json(), r.headers


async def test_an_invalid_custom_resource_is_422_invalid_naming_each_field(fakekube: FakeKube) -> None:
    bad = isvc("bad")
    bad["spec"]["predictor"]["model"]["modelFormat"] = {"name": 5}
    bad["spec"]["predictor"]["model"].pop("storage")
    del bad["spec"]["predictor"]
    code, body, _ = await call(fakekube, "POST", ISVCS, bad)
    assert code == 422
    assert body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Invalid", "code": 422,
        "message": 'InferenceService.serving.kserve.io "bad" is invalid: spec.predictor: Required value',
        "details": {"name": "bad", "group": "serving.kserve.io", "kind": "InferenceService",
                    "causes": [{"reason": "FieldValueRequired", "message": "Required value", "field": "spec.predictor"}]},
    }
    typed = isvc("typed")
    typed["spec"]["predictor"]["model"]["modelFormat"] = {"name": 5}
    code, body, _ = await call(fakekube, "POST", ISVCS, typed)
    assert code == 422 and body["details"]["causes"][0]["field"] == "spec.predictor.model.modelFormat.name"
    assert body["details"]["causes"][0]["reason"] == "FieldValueTypeInvalid"
    assert "must be of type string" in body["message"]
    assert await fakekube.get(f"{ISVCS}/bad") is None and await fakekube.get(f"{ISVCS}/typed") is None

    # the status schema too (enums), through the /status subresource
    await fakekube.apply(ISVCS, isvc("good"))
    code, body, _ = await call(fakekube, "PATCH", f"{ISVCS}/good/status",
                               {"status": {"modelStatus": {"transitionStatus": "Sideways"}}}, content_type=MERGE)
    assert code == 422
    [cause] = body["details"]["causes"]
    assert cause == {"reason": "FieldValueNotSupported", "field": "status.modelStatus.transitionStatus",
                     "message": 'Unsupported value: "Sideways": supported values: "", "UpToDate", "InProgress", '
                                '"BlockedByFailedLoad", "InvalidSpec"'}
    code, body, _ = await call(fakekube, "POST", f"{CORE}/configmaps", {"metadata": {"name": "Not_A_Name"}})
    assert code == 422 and body["details"]["causes"][0]["field"] == "metadata.name"
    # built-in kinds against their OpenAPI schema
    deployments = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
    code, body, _ = await call(fakekube, "POST", deployments, {**DEPLOYMENT, "spec": {**DEPLOYMENT["spec"], "replicas": "3"}})
    assert code == 422 and body["details"]["causes"][0]["field"] == "spec.replicas"
    assert body["message"].startswith('Deployment.apps "d" is invalid: spec.replicas: Invalid value')
    code, body, _ = await call(fakekube, "POST", deployments, {"metadata": {"name": "d"}, "spec": {"replicas": 1}})
    assert code == 422 and {c["field"] for c in body["details"]["causes"]} == {"spec.selector", "spec.template"}
    code, body, _ = await call(fakekube, "POST", f"{CORE}/configmaps", {"metadata": {"name": "cm"}, "data": {"k": 1}})
    assert code == 422 and body["details"]["causes"][0]["field"] == "data.k"


async def test_defaults_are_applied_unknown_fields_pruned_and_preserved_fields_kept(fakekube: FakeKube) -> None:
    obj = isvc("defaults")
    obj["spec"]["predictor"]["model"]["storage"]["notInTheSchema"] = 1    # pruned
    obj["spec"]["predictor"]["model"]["resources"] = {"limits": {}}      # model preserves unknown fields
    obj["spec"]["predictor"]["nodeSelector"] = {"disk": "ssd"}           # so does predictor
    obj["spec"]["nonsense"] = True                                    # pruned
    code, created, headers = await call(fakekube, "POST", ISVCS, obj)
    assert code == 201
    assert "notInTheSchema" not in created["spec"]["predictor"]["model"]["storage"] and "nonsense" not in created["spec"]
    assert created["spec"]["predictor"]["nodeSelector"] == {"disk": "ssd"}
    assert created["spec"]["predictor"]["model"]["resources"] == {"limits": {}}
    assert 'unknown field \\"spec.nonsense\\"' in headers["Warning"]
    assert 'unknown field \\"spec.predictor.model.storage.notInTheSchema\\"' in headers["Warning"]
    code, _, _ = await call(fakekube, "POST", f"{ISVCS}?fieldValidation=Strict", {**obj, "metadata": {"name": "strict"}})
    assert code == 400
    # the Predictor CRD defaults its whole status (as upstream's, for the printer columns)
    predictor = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "metadata": {"name": "p"},
                 "spec": {"modelType": {"name": "sklearn"}, "path": "m.joblib"}}
    created = await fakekube.apply(PREDICTORS, predictor)
    assert created["status"]["activeModelState"] == "Pending" and created["status"]["transitionStatus"] == "UpToDate"
    assert (await fakekube.problems()) == []            # the harness's pruning is not the controller's


async def test_a_write_from_a_stale_resource_version_is_409_conflict(fakekube: FakeKube) -> None:
    created = await fakekube.apply(ISVCS, isvc("versioned"))
    stale = created["metadata"]["resourceVersion"]
    await fakekube.request("PATCH", f"{ISVCS}/versioned", {"metadata": {"labels": {"a": "b"}}}, content_type=MERGE)
    expected = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Conflict", "code": 409,
        "message": 'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "versioned": the object has been '
                   "modified; please apply your changes to the latest version and try again",
        "details": {"name": "versioned", "group": "serving.kserve.io", "kind": "inferenceservices"},
    }
    code, body, _ = await call(fakekube, "PUT", f"{ISVCS}/versioned", created)
    assert (code, body) == (409, expected)
    code, body, _ = await call(fakekube, "PATCH", f"{ISVCS}/versioned/status",
                               {"metadata": {"resourceVersion": stale}, "status": {"url": "x"}}, content_type=MERGE)
    assert (code, body) == (409, expected)
    unconditional = {**created, "metadata": {k: v for k, v in created["metadata"].items() if k != "resourceVersion"}}
    code, body, _ = await call(fakekube, "PUT", f"{ISVCS}/versioned", unconditional)
    assert code == 422 and body["details"]["causes"][0]["field"] == "metadata.resourceVersion"
    current = await fakekube.get(f"{ISVCS}/versioned")
    code, body, _ = await call(fakekube, "PUT", f"{ISVCS}/versioned", current)
    assert code == 200
    code, body, _ = await call(fakekube, "PATCH", f"{ISVCS}/versioned", {"metadata": {"labels": {"c": "d"}}}, content_type=MERGE)
    assert code == 200 and body["metadata"]["labels"] == {"a": "b", "c": "d"}    # no resourceVersion: unconditional
    code, _, _ = await call(fakekube, "POST", f"{CORE}/configmaps", {"metadata": {"name": "x", "resourceVersion": "3"}})
    assert code == 400


async def test_the_status_subresource_splits_status_from_the_rest(fakekube: FakeKube) -> None:
    obj = isvc("split")
    obj["status"] = {"url": "ignored-on-create"}
    created = await fakekube.apply(ISVCS, obj)
    assert "url" not in (created.get("status") or {})
    path = f"{ISVCS}/split"
    written = await fakekube.request("PATCH", f"{path}/status", {"status": {"url": "grpc://x"}, "spec": {"predictor": {}},
                                                                 "metadata": {"labels": {"no": "pe"}}}, content_type=MERGE)
    assert written["status"]["url"] == "grpc://x"
    assert written["spec"] == created["spec"] and "labels" not in written["metadata"]
    assert written["metadata"]["generation"] == 1
    main = await fakekube.request("PATCH", path, {"status": {"url": "overwritten?"}, "metadata": {"labels": {"l": "1"}}},
                                  content_type=MERGE)
    assert main["status"]["url"] == "grpc://x" and main["metadata"]["labels"] == {"l": "1"}
    assert main["metadata"]["generation"] == 1                                 # metadata only
    changed = await fakekube.request("PATCH", path, {"spec": {"predictor": {"model": {"runtime": "mlserver-1.x"}}}},
                                     content_type=MERGE)
    assert changed["metadata"]["generation"] == 2 and changed["status"]["url"] == "grpc://x"
    runtime = await fakekube.apply(f"{SERVING}/servingruntimes", serving_runtime())
    code, _, _ = await call(fakekube, "PATCH", f"{SERVING}/servingruntimes/mlserver-1.x/status", {"status": {}},
                            content_type=MERGE)
    assert code == 200 and runtime["metadata"]["name"] == "mlserver-1.x"       # servingruntimes have /status too
    code, _, _ = await call(fakekube, "PATCH", f"{CORE}/configmaps/none/status", {"status": {}}, content_type=MERGE)
    assert code == 404                                                         # configmaps have none


async def test_watch_bookmarks_carry_the_current_resource_version_only_when_allowed(tmp_path: Path) -> None:
    async with checked(await fakekube_at(tmp_path, bookmark_interval=0.1)) as kube:
        listed = await kube.get(f"{CORE}/configmaps")
        for i in range(3):    # other kinds move the global resourceVersion
            await kube.apply(f"{CORE}/secrets", {"metadata": {"name": f"s{i}"}, "data": {}})
        now = (await kube.get(f"{CORE}/secrets"))["metadata"]["resourceVersion"]
        since = listed["metadata"]["resourceVersion"]
        query = f"watch=true&resourceVersion={since}&timeoutSeconds=1"
        async with kube.http.get(f"{kube.url}{CORE}/configmaps?{query}&allowWatchBookmarks=true") as r:
            first = json.loads(await r.content.readline())
        assert first == {"type": "BOOKMARK", "object": {"kind": "ConfigMap", "apiVersion": "v1",
                                                       "metadata": {"resourceVersion": now}}}
        async with kube.http.get(f"{kube.url}{CORE}/configmaps?{query}") as r:
            lines = [line async for line in r.content if line.strip()]
        assert lines == []                          # the stream ended (timeoutSeconds) without one


async def test_a_watch_from_a_compacted_resource_version_gets_410_and_open_watches_go_on(fakekube: FakeKube) -> None:
    await fakekube.apply(f"{CORE}/configmaps", {"metadata": {"name": "a"}, "data": {}})
    old = (await fakekube.get(f"{CORE}/configmaps"))["metadata"]["resourceVersion"]
    async with fakekube.http.get(f"{fakekube.url}{CORE}/configmaps?watch=1&resourceVersion={old}&timeoutSeconds=5") as live:
        async def open_watch() -> bool:
            compacted = await fakekube.request("POST", "/_control/compact")
            return compacted["openWatches"] >= 1
        await eventually(open_watch, what="the watch is open")
        await fakekube.apply(f"{CORE}/configmaps", {"metadata": {"name": "b"}, "data": {}})
        event = json.loads(await live.content.readline())
        assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "b"
    await fakekube.request("POST", "/_control/compact")      # now past `old`
    async with fakekube.http.get(f"{fakekube.url}{CORE}/configmaps?watch=1&resourceVersion={old}&timeoutSeconds=5") as r:
        assert r.status == 200
        gone = json.loads(await r.content.readline())
    assert gone["type"] == "ERROR"
    assert gone["object"]["code"] == 410 and gone["object"]["reason"] == "Expired"
    assert gone["object"]["message"].startswith(f"too old resource version: {old}")


async def test_rbac_refuses_what_the_cluster_role_does_not_grant_and_the_fixture_fails_on_it(tmp_path: Path) -> None:
    kube = await fakekube_at(tmp_path)
    with pytest.raises(AssertionError, match="would refuse"):
        async with checked(kube):
            await kube.apply(f"{CORE}/configmaps", {"metadata": {"name": "cm"}, "data": {}})
            code, _, _ = await call(kube, "GET", f"{CORE}/configmaps/cm", token=CONTROLLER_TOKEN)
            assert code == 200                                           # granted: get configmaps
            code, _, _ = await call(kube, "GET", f"{CORE}/configmaps?watch=true&timeoutSeconds=0", token=CONTROLLER_TOKEN)
            assert code == 200                                           # granted: watch
            code, body, _ = await call(kube, "DELETE", f"{CORE}/configmaps/cm", token=CONTROLLER_TOKEN)
            assert code == 403 and body["reason"] == "Forbidden"
            assert body["message"] == (f'configmaps "cm" is forbidden: User "{CONTROLLER_USER}" cannot delete resource '
                                       f'"configmaps" in API group "" in the namespace "{NAMESPACE}"')
            await kube.apply(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", DEPLOYMENT)
            dep = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/d"
            code, _, _ = await call(kube, "PATCH", dep, {"spec": {"replicas": 2}}, content_type=MERGE, token=CONTROLLER_TOKEN)
            assert code == 200                                           # granted: patch deployments
            code, body, _ = await call(kube, "PATCH", f"{dep}/status", {"status": {}}, content_type=MERGE,
                                       token=CONTROLLER_TOKEN)
            assert code == 403 and 'cannot patch resource "deployments/status" in API group "apps"' in body["message"]
            code, body, _ = await call(kube, "GET", "/api/v1/namespaces/x/pods", token=CONTROLLER_TOKEN)
            assert code == 403                                           # authorized before it is looked up
            code, body, _ = await call(kube, "GET", f"{CORE}/widgets", token=None)
            assert code == 404                                           # the admin is told it does not exist
            code, body, _ = await call(kube, "GET", f"{CORE}/configmaps", token="not-a-token")
            assert code == 401
            denied = await kube.get("/_control/denied")
            assert [(d["method"], d["path"], d["user"]) for d in denied] == [
                ("DELETE", f"{CORE}/configmaps/cm", CONTROLLER_USER), ("PATCH", f"{dep}/status", CONTROLLER_USER),
                ("GET", "/api/v1/namespaces/x/pods", CONTROLLER_USER),
            ]
            assert await kube.get(f"{CORE}/configmaps/cm") is not None


async def test_a_crd_that_is_not_structural_stops_the_fake_as_the_real_server_refuses_it(tmp_path: Path) -> None:
    crd = yaml.safe_load((KUSTOMIZATION / "crd" / "serving.kserve.io_predictors.yaml").read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec_schema["properties"]["path"]["type"]
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(crd))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["crd.yaml"]}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SERVER), "--port", str(free_port()), "--kustomization", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode != 0
    assert "predictors.serving.kserve.io is invalid" in err.decode()
    assert "properties[spec].properties[path]: type: Required value" in err.decode()
