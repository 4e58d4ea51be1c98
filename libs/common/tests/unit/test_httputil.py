"""install_error_handlers: the same errors mean the same on HTTP as on gRPC; EmbeddedServer
leaves the signals to the service."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meshserve.common.errors import NotFound, Unavailable
from meshserve.common.grpcutil import register_error_translator
from meshserve.common.httputil import INTERNAL_TEXT, EmbeddedServer, install_error_handlers


class _Outage(Exception):
    pass


class _Boom(Exception):
    pass


register_error_translator(lambda err: Unavailable("database is down") if isinstance(err, _Outage) else None)


async def endpoint(request: Request) -> PlainTextResponse:
    what = request.path_params["what"]
    if what == "missing":
        raise NotFound("model 'x' is not registered")
    if what == "outage":
        raise _Outage()
    if what == "boom":
        raise _Boom("secret internals")
    return PlainTextResponse("ok")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=[Route("/{what}", endpoint)])
    install_error_handlers(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


@pytest.mark.parametrize(
    ("what", "code", "body"),
    [
        pytest.param("missing", 404, {"error": "model 'x' is not registered"}, id="ours"),
        pytest.param("outage", 503, {"error": "database is down"}, id="translated"),
        pytest.param("boom", 500, {"error": INTERNAL_TEXT}, id="unknown"),
    ],
)
async def test_errors_map_to_codes(client: httpx.AsyncClient, what: str, code: int, body: dict[str, str]) -> None:
    response = await client.get(f"/{what}")
    assert (response.status_code, response.json()) == (code, body)
    assert (await client.get("/fine")).text == "ok"


async def test_unknown_errors_are_logged_once(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    await client.get("/boom")
    records = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], _Boom)]
    assert [r.getMessage() for r in records] == ["unexpected error in GET /boom"]


async def test_fastapi_apps_take_it_too() -> None:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/m")
    async def missing() -> None:
        raise NotFound("gone")

    install_error_handlers(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/m")
    assert (response.status_code, response.json()) == (404, {"error": "gone"})


async def test_an_embedded_server_leaves_sigterm_to_the_service() -> None:
    """SIGTERM reaches the loop's handler (the service's Lifecycle) while the server keeps
    serving; the service then stops it. (Plain uvicorn would take the signal itself.)"""
    loop = asyncio.get_running_loop()
    sigterm = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, sigterm.set)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = Starlette(routes=[Route("/{what}", endpoint)])
    server = EmbeddedServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
    try:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/fine"
        async with httpx.AsyncClient() as c:
            for _ in range(500):  # bounded: until uvicorn serves
                if server.started:
                    break
                await asyncio.sleep(0.01)
            assert (await c.get(url)).text == "ok"
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(sigterm.wait(), 10)
            assert not server.should_exit and (await c.get(url)).text == "ok"
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        sock.close()
