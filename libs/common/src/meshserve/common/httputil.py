"""HTTP helpers shared by every service's Starlette/FastAPI app: the one error handler, and
uvicorn embedded in the service's own event loop.

Owns the HTTP side of the error mapping, with the same meaning as the gRPC side
(`meshserve.common.grpcutil.status_for`): a `MeshError` (or an exception a service registered a
translator for with `grpcutil.register_error_translator`) answers with its `http_status` and
`{"error": <message>}`; anything else is 500 with a fixed text, logged with its traceback and
never sent to the client.

    app = FastAPI()                 # or Starlette(...)
    install_error_handlers(app)

`EmbeddedServer` is uvicorn for a service that runs on `meshserve.common.lifecycle`: the
service's `Lifecycle` owns SIGTERM/SIGINT (uvicorn's own handlers would stop the HTTP server
before the rest and out of the service's shutdown order); a closer sets `should_exit`.

May import starlette, uvicorn, `meshserve.common.errors` and `meshserve.common.grpcutil` (for
the translators); nothing of a service.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshserve.common.errors import MeshError
from meshserve.common.grpcutil import translate

log = logging.getLogger(__name__)

INTERNAL_TEXT = "internal error; see server log"


def error_response(err: BaseException, *, where: str) -> JSONResponse:
    """The answer to a request whose handler raised `err` (`where`: the request, for the log)."""
    mapped = err if isinstance(err, MeshError) else translate(err)
    if mapped is not None:
        return JSONResponse({"error": mapped.message}, status_code=mapped.http_status)
    log.error("unexpected error in %s", where, exc_info=err)
    return JSONResponse({"error": INTERNAL_TEXT}, status_code=500)


async def _handle(request: Request, err: Exception) -> JSONResponse:
    return error_response(err, where=f"{request.method} {request.url.path}")


class _CatchAll:
    """ASGI middleware: what no handler took becomes `error_response` (Starlette's own last
    resort answers 500 but re-raises, so the server logs it a second time)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as err:
            if started:  # the answer is on its way: nothing else can be sent
                raise
            where = f"{scope.get('method', '')} {scope.get('path', '')}"
            await error_response(err, where=where)(scope, receive, send)


def install_error_handlers(app: Starlette) -> None:
    """Answer `MeshError`s (and translated exceptions) with their code, anything else with 500.

    `HTTPException`s (404 of an unknown path, 405) keep Starlette's handling, or the app's own
    handler for them. Call before the app starts (it adds a middleware).
    """
    app.add_exception_handler(MeshError, _handle)
    app.add_middleware(_CatchAll)


class EmbeddedServer(uvicorn.Server):
    """uvicorn in the service's loop, leaving the signals to the service's `Lifecycle` (as
    MLServer's RESTServer): stop it with `should_exit = True` from a closer."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
