"""The local-mode resource store over the admin API: apply, list, watch, status, delete."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from meshserve.scheduler.api import create_app
from meshserve.scheduler.service import SchedulerService
from meshserve.scheduler.store.migrate import upgrade


@pytest.fixture
async def client(make_service: Callable[..., AbstractAsyncContextManager[SchedulerService]], database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    upgrade(database_url)
    async with make_service(database_url) as service:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://a") as c:
            yield c


def isvc(name: str, path: str = "sklearn/mnist-svm.joblib") -> dict[str, object]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storage": {"key": "localMinIO", "path": path}}}},
    }


async def test_apply_list_watch_status_delete(client: httpx.AsyncClient, prefix: str) -> None:
    name = f"isvc-{prefix}"
    _, start = (await client.get("/v1/resources")).json().values()
    applied = (await client.post("/v1/resources", json=[isvc(name)])).json()["items"]
    assert [(a["kind"], a["namespace"], a["name"], a["action"]) for a in applied] == [("InferenceService", "default", name, "created")]
    again = (await client.post("/v1/resources", json=isvc(name))).json()["items"][0]
    assert again["action"] == "unchanged" and again["resourceVersion"] == applied[0]["resourceVersion"]

    obj = (await client.get(f"/v1/resources/InferenceService/default/{name}")).json()
    assert obj["metadata"]["generation"] == 1 and obj["metadata"]["uid"]
    patched = (await client.patch(f"/v1/resources/InferenceService/default/{name}/status", json={"modelStatus": {"transitionStatus": "UpToDate"}})).json()
    assert patched["status"]["modelStatus"]["transitionStatus"] == "UpToDate"
    changed = (await client.post("/v1/resources", json=isvc(name, "sklearn/other.joblib"))).json()["items"][0]
    assert changed["action"] == "configured"
    obj = (await client.get(f"/v1/resources/InferenceService/default/{name}")).json()
    assert obj["metadata"]["generation"] == 2
    assert obj["status"]["modelStatus"]["transitionStatus"] == "UpToDate"  # status survives apply

    assert (await client.delete(f"/v1/resources/InferenceService/default/{name}")).status_code == 200
    assert (await client.get(f"/v1/resources/InferenceService/default/{name}")).status_code == 404
    events = (await client.get(f"/v1/resources:watch?resourceVersion={start}&timeoutSeconds=0")).json()["events"]
    mine = [e["type"] for e in events if e["object"]["metadata"]["name"] == name]
    assert mine == ["DELETED"]  # the latest state of the row; a resuming watcher sees the delete


async def test_watch_returns_as_soon_as_something_changes(client: httpx.AsyncClient, prefix: str) -> None:
    _, version = (await client.get("/v1/resources")).json().values()
    waiter = asyncio.create_task(client.get(f"/v1/resources:watch?resourceVersion={version}&timeoutSeconds=20"))
    await asyncio.sleep(0)  # give the long poll a turn to start; the assertions hold either way (the watch
    # resumes from `version`), so this only decides whether the wake-up or the immediate answer is exercised
    await client.post("/v1/resources", json=isvc(f"w-{prefix}"))
    result = (await asyncio.wait_for(waiter, 15)).json()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in result["events"]] == [("ADDED", f"w-{prefix}")]
    assert int(result["resourceVersion"]) > int(version)


@pytest.mark.parametrize(
    "body",
    [{"kind": "Pod", "metadata": {"name": "x"}}, {"kind": "InferenceService"}, [1, 2], "text"],
)
async def test_bad_documents_are_400_and_nothing_is_stored(client: httpx.AsyncClient, body: object, prefix: str) -> None:
    good = isvc(f"good-{prefix}")
    payload = [good, body] if isinstance(body, dict) else body
    response = await client.post("/v1/resources", json=payload)
    assert response.status_code == 400, response.text
    assert (await client.get(f"/v1/resources/InferenceService/default/good-{prefix}")).status_code == 404


async def test_a_carried_secrets_values_are_hidden_unless_asked_for_with_the_token(
    make_service: Callable[..., AbstractAsyncContextManager[SchedulerService]], database_url: str, prefix: str
) -> None:
    from pydantic import SecretStr

    upgrade(database_url)
    name = f"local-secret.sc-{prefix}"
    carrier = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"meshserve.io/local-secret": "true"},
                     "annotations": {"meshserve.io/secret-name": f"sc-{prefix}"}},
        "data": {"s3key": "eyJzZWNyZXRfYWNjZXNzX2tleSI6ICJ1bmlxdWUtNDI0MiJ9"},
    }
    plain = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"plain-{prefix}"}, "data": {"a": "b"}}
    auth = {"Authorization": "Bearer tok-1"}
    async with make_service(database_url, admin_token=SecretStr("tok-1")) as service:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://a") as c:
            _, start = (await c.get("/v1/resources")).json().values()
            assert (await c.post("/v1/resources", json=[carrier, plain], headers=auth)).status_code == 200
            path = f"/v1/resources/ConfigMap/default/{name}"
            shown = [
                (await c.get(path)).json(),
                next(i for i in (await c.get("/v1/resources", params={"kind": "ConfigMap"})).json()["items"]
                     if i["metadata"]["name"] == name),
                next(e["object"] for e in (await c.get(f"/v1/resources:watch?resourceVersion={start}&timeoutSeconds=0")).json()["events"]
                     if e["object"]["metadata"]["name"] == name),
            ]
            assert all(obj["data"] == {"s3key": "<hidden>"} for obj in shown), shown
            assert (await c.get(f"/v1/resources/ConfigMap/default/plain-{prefix}")).json()["data"] == {"a": "b"}
            refused = await c.get(path, params={"secretValues": "true"})
            assert refused.status_code == 401 and "secretValues=true" in refused.json()["error"]
            revealed = await c.get(path, params={"secretValues": "true"}, headers=auth)
            assert revealed.json()["data"] == carrier["data"]
