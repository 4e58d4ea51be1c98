"""The admin REST API over real Redis + Postgres: auth on mutations, 4xx for bad input, 503
naming a store that is down."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from pydantic import SecretStr

from meshserve.scheduler.api import create_app
from meshserve.scheduler.service import SchedulerService
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.store.live import LiveState
from meshserve.scheduler.store.migrate import upgrade
from meshserve.scheduler.store.registry import Registry

TOKEN = "admin-token-for-tests"


@pytest.fixture
async def client(make_service: Callable[..., AbstractAsyncContextManager[SchedulerService]], database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    upgrade(database_url)
    async with make_service(database_url, admin_token=SecretStr(TOKEN)) as service:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            yield c


BODY = {"name": "auth-model", "format": "sklearn", "storageUri": "s3://b/m.joblib"}


async def test_mutations_need_the_token_reads_do_not(client: httpx.AsyncClient, prefix: str) -> None:
    body = {**BODY, "name": f"auth-{prefix}"}
    assert (await client.post("/v1/models", json=body)).status_code == 401
    wrong = await client.post("/v1/models", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "Bearer" in wrong.json()["error"]
    ok = await client.post("/v1/models", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 201, ok.text
    assert (await client.get(f"/v1/models/{body['name']}")).json()["state"] == "Standby"
    assert (await client.delete(f"/v1/models/{body['name']}")).status_code == 401
    assert (await client.delete(f"/v1/models/{body['name']}", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 204
    assert (await client.get(f"/v1/models/{body['name']}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({**BODY, "name": "../etc"}, 422),
        ({**BODY, "minCopies": -1}, 422),
        ({**BODY, "unknownField": 1}, 422),
        ({**BODY, "storageUri": "ftp://x/y"}, 400),
        ({"name": "no-storage", "format": "sklearn"}, 400),
        ({**BODY, "minCopies": 3, "maxCopies": 1}, 400),
    ],
)
async def test_bad_registrations_are_4xx_with_a_message(client: httpx.AsyncClient, body: dict[str, object], status: int) -> None:
    response = await client.post("/v1/models", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == status, response.text
    assert response.json()


async def test_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/models/nope")).status_code == 404
    assert (await client.post("/v1/models/nope:load", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 404
    assert (await client.get("/v1/events?limit=0")).status_code == 422


READ_TOKEN = "read-token-for-tests"


async def test_reads_need_a_token_when_a_read_token_is_set(
    make_service: Callable[..., AbstractAsyncContextManager[SchedulerService]], database_url: str, prefix: str
) -> None:
    upgrade(database_url)
    async with make_service(database_url, admin_token=SecretStr(TOKEN), admin_read_token=SecretStr(READ_TOKEN)) as service:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            admin = {"Authorization": f"Bearer {TOKEN}"}
            reader = {"Authorization": f"Bearer {READ_TOKEN}"}
            body = {**BODY, "name": f"read-{prefix}"}
            assert (await client.post("/v1/models", json=body, headers=admin)).status_code == 201
            for path in ("/v1/models", f"/v1/models/{body['name']}", "/v1/vmodels", "/v1/pods", "/v1/runtimes",
                         "/v1/events", "/v1/resources"):
                refused = await client.get(path)
                assert refused.status_code == 401, path
                assert "for reads" in refused.json()["error"] and READ_TOKEN not in refused.text
                assert (await client.get(path, headers={"Authorization": "Bearer nope"})).status_code == 401, path
                assert (await client.get(path, headers=reader)).status_code == 200, path
                assert (await client.get(path, headers=admin)).status_code == 200, path  # the admin token reads too
            # the read token changes nothing: mutations still need the admin token
            assert (await client.delete(f"/v1/models/{body['name']}", headers=reader)).status_code == 401
            # probes, the OpenAPI document and the page's files stay open; the document is the same
            for path in ("/healthz", "/openapi.json", "/ui"):
                assert (await client.get(path)).status_code == 200, path
            spec = (await client.get("/openapi.json")).json()
            assert all(p.get("name") != "authorization" for p in spec["paths"]["/v1/models"]["get"].get("parameters", []))
            assert (await client.delete(f"/v1/models/{body['name']}", headers=admin)).status_code == 204


async def test_the_model_list_carries_each_models_request_rate(
    make_service: Callable[..., AbstractAsyncContextManager[SchedulerService]], database_url: str, prefix: str
) -> None:
    upgrade(database_url)
    async with make_service(database_url) as service:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            name = f"rate-{prefix}"
            assert (await client.post("/v1/models", json={**BODY, "name": name})).status_code == 201
            await service.live.add_usage({name: 42}, at_ms=int(time.time() * 1000) - 15_000)  # a full 10 s bucket ago
            detail = (await client.get(f"/v1/models/{name}")).json()
            listed = next(m for m in (await client.get("/v1/models?limit=1000")).json()["items"] if m["id"] == name)
            assert detail["requestsPerMinute"] == listed["requestsPerMinute"] == 42
            assert (await client.delete(f"/v1/models/{name}")).status_code == 204


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_store_that_is_down_is_a_503_naming_it_on_a_bare_app(database_url: str, prefix: str) -> None:
    """`create_app(service)` alone maps a Redis outage (the translator `api` registers) and a
    Postgres outage to 503 with the store named; `/readyz` names the one that is down."""
    upgrade(database_url)
    down = f"postgresql://meshserve@127.0.0.1:{_closed_port()}/none"
    settings = SchedulerSettings(redis_url=f"redis://127.0.0.1:{_closed_port()}/0", database_url=database_url, key_prefix=prefix)
    registry, live = Registry(database_url), LiveState(settings.redis_url, prefix=prefix)
    dead_registry = Registry(down)
    service = SchedulerService(settings=settings, registry=registry, live=live)
    no_postgres = SchedulerService(settings=settings.model_copy(update={"database_url": down}), registry=dead_registry, live=live)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://a") as client:
            r = await client.get("/v1/pods")
            assert r.status_code == 503
            assert r.json()["error"].startswith("live state (Redis) is unavailable: ConnectionError"), r.text
            r = await client.get("/readyz")
            assert r.status_code == 503 and [p.split(":")[0] for p in r.json()["problems"]] == ["redis"], r.text
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(no_postgres)), base_url="http://a") as client:
            r = await client.get("/v1/runtimes")
            assert (r.status_code, r.json()) == (503, {"error": "the model registry (Postgres) is unavailable: OperationalError"})
    finally:
        for svc in (service, no_postgres):
            await svc.close()
            await svc.pullers.close()
        await live.close()
        await registry.close()
        await dead_registry.close()
