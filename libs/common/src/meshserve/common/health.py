"""`/healthz` (live) and `/readyz` (ready) for every service.

Owns what the two probes mean: `/healthz` answers 200 while the service's event loop runs;
`/readyz` answers 200 when every readiness check passes and the service is not stopping, else
503 naming what is not ready. A service keeps one `Health`, adds its checks (`add_check`), calls
`stopping()` first thing at shutdown, and serves it either

- on a port of its own, `HealthServer(health, host=..., port=...)`, a tiny HTTP/1.1 server on
  asyncio streams (the puller, the controller: services without an HTTP app), or
- on its Starlette/FastAPI app, `app.router.routes.extend(health.starlette_routes())`
  (the scheduler's admin API, the router's REST door).

Bodies: `{"status": "ok"}`; `{"status": "ready"}` or `{"status": "not ready", "problems": [...]}`.
A problem is the failing check's name; a check that raises a `MeshError` (meant for clients:
`Unavailable("live state (Redis) is unavailable: ...")`) adds its message, `"redis: <message>"`;
any other exception's text stays in the log (debug), it may not be meant for a client.

May import asyncio, json, starlette and `meshserve.common.errors`; nothing of a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshserve.common.errors import MeshError

log = logging.getLogger(__name__)

Check = Callable[[], bool | Awaitable[bool]]
"""A readiness check: true when that part of the service is ready (may be async)."""

_MAX_REQUEST_BYTES = 8192


class Health:
    """The service's liveness and readiness, shared by whatever serves the probes."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._stopping = False

    def add_check(self, name: str, check: Check) -> None:
        """`/readyz` fails (naming `name`, and the message of a `MeshError` it raises) while
        `check()` is false or raises."""
        self._checks[name] = check

    def stopping(self) -> None:
        """The service shuts down: `/readyz` fails from now on (idempotent)."""
        self._stopping = True

    @property
    def is_stopping(self) -> bool:
        return self._stopping

    async def problems(self) -> list[str]:
        """What is not ready (empty: ready)."""
        if self._stopping:
            return ["stopping"]
        failing = []
        for name, check in self._checks.items():
            try:
                result = check()
                ok = await result if inspect.isawaitable(result) else result
            except MeshError as err:
                failing.append(f"{name}: {err.message}")
                continue
            except Exception as err:  # a check that fails is a not-ready part, not a crash
                log.debug("readiness check %s failed: %r", name, err)
                ok = False
            if not ok:
                failing.append(name)
        return failing

    async def answer(self, path: str) -> tuple[int, dict[str, object]]:
        """Status code and JSON body for `path` (404 for anything but the two probes)."""
        if path == "/healthz":
            return 200, {"status": "ok"}
        if path == "/readyz":
            problems = await self.problems()
            if problems:
                return 503, {"status": "not ready", "problems": problems}
            return 200, {"status": "ready"}
        return 404, {"error": f"no such path {path!r}: /healthz or /readyz"}

    def starlette_routes(self) -> list[Route]:
        """The two probes as Starlette routes, for a service that has an HTTP app already."""

        async def probe(request: Request) -> JSONResponse:
            code, body = await self.answer(request.url.path)
            return JSONResponse(body, status_code=code)

        return [Route("/healthz", probe, methods=["GET"]), Route("/readyz", probe, methods=["GET"])]


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """Serves a `Health` over plain HTTP/1.1 (one request per connection) on its own port.

    `await start()` binds (port 0 picks a free one, then `port` tells it); `await stop()` closes.
    """

    def __init__(self, health: Health, *, host: str = "0.0.0.0", port: int) -> None:
        self.health = health
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(head)
            code: int
            body: dict[str, object]
            if not method:
                code, body = 400, {"error": "bad request"}
            elif method not in ("GET", "HEAD"):
                code, body = 405, {"error": "GET only"}
            else:
                code, body = await self.health.answer(path.split("?", 1)[0])
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else payload)
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # a probe that hung up or sent garbage: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _request_line(head: bytes) -> tuple[str, str]:
    """(method, path) of an HTTP request head; ("", "") when it is not one."""
    if len(head) > _MAX_REQUEST_BYTES:
        return "", ""
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "", ""
    return parts[0], parts[1]
