"""Health and HealthServer over real sockets: /healthz live, /readyz checks and stopping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from meshserve.common.errors import Unavailable
from meshserve.common.health import Health, HealthServer


@pytest.fixture
async def served() -> AsyncIterator[tuple[Health, httpx.AsyncClient]]:
    health = Health()
    async with HealthServer(health, host="127.0.0.1", port=0) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            yield health, client


async def test_live_at_once_ready_when_every_check_passes(served: tuple[Health, httpx.AsyncClient]) -> None:
    health, client = served
    informers = asyncio.Event()

    async def store_ok() -> bool:
        return True

    health.add_check("informers", informers.is_set)
    health.add_check("store", store_ok)
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert (r.status_code, r.json()) == (503, {"status": "not ready", "problems": ["informers"]})
    informers.set()
    r = await client.get("/readyz")
    assert (r.status_code, r.json()) == (200, {"status": "ready"})


async def test_stopping_and_raising_checks_are_not_ready(served: tuple[Health, httpx.AsyncClient]) -> None:
    health, client = served

    def broken() -> bool:
        raise OSError("no route")

    async def store() -> bool:
        raise Unavailable("the store is unavailable: connection refused")

    health.add_check("broken", broken)
    health.add_check("store", store)
    # a MeshError's message is for clients: it is named; an OSError's text stays in the log
    assert (await client.get("/readyz")).json()["problems"] == [
        "broken", "store: the store is unavailable: connection refused"
    ]
    health.stopping()
    r = await client.get("/readyz")
    assert (r.status_code, r.json()["problems"]) == (503, ["stopping"])
    assert (await client.get("/healthz")).status_code == 200


async def test_other_paths_methods_and_garbage(served: tuple[Health, httpx.AsyncClient]) -> None:
    _, client = served
    assert (await client.get("/nope")).status_code == 404
    assert (await client.post("/readyz")).status_code == 405
    assert (await client.get("/healthz?verbose=1")).status_code == 200
    port = int(str(client.base_url).rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"nonsense\r\n\r\n")
    await writer.drain()
    assert (await reader.read()).startswith(b"HTTP/1.1 400")
    writer.close()


async def test_the_same_probes_on_a_starlette_app() -> None:
    health = Health()
    health.add_check("never", lambda: False)
    app = Starlette(routes=health.starlette_routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/healthz")).status_code == 200
        r = await c.get("/readyz")
        assert (r.status_code, r.json()["problems"]) == (503, ["never"])
