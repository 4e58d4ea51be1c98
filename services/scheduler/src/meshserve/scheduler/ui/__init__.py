"""The placement page (`/ui`): a static page that reads the admin API only.

Owns the page's files (`static/`: plain HTML, CSS and JavaScript, no build step) and the
routes that serve them; imports nothing of the scheduler but FastAPI and Starlette.

The page polls the JSON endpoints every client uses (`/v1/pods`, `/v1/models`,
`/v1/events`, `/v1/models/{id}`) with `fetch`, which can send `Authorization: Bearer`
(an `EventSource` cannot), so a token pasted into the page works the day reads need one.

Routes (none in the OpenAPI document; they are not part of the API):
- `/ui`: pods as bars of capacity with the models inside them, and the recent events.
- `/ui/models/{id}`: the same page with one model's detail. The id is checked against
  `GET /v1/models/{id}` of this same app, in process: an id the API does not know (or
  refuses) is a 404 *page*, never a stack trace. Anything else under `/ui` that is not a
  file is a 404 page too.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message

STATIC = Path(__file__).with_name("static")

_NOT_FOUND = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Not found · meshserve placement</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/ui/static/style.css"></head>
<body class="not-found"><main>
<h1>404 · not found</h1>
<p id="not-found-message">{message}</p>
<p><a href="/ui">Back to the placement page</a></p>
</main></body></html>
"""


def shown_id(text: str, *, limit: int = 80) -> str:
    """`text` fit to quote in a page: unprintable characters replaced, cut to `limit`."""
    clean = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "\u2026"


def not_found_page(message: str) -> HTMLResponse:
    return HTMLResponse(_NOT_FOUND.format(message=html.escape(message)), status_code=404)


async def api_status(app: ASGIApp, path: str, *, authorization: str | None) -> int:
    """The HTTP status `app` answers to `GET path` (`path` decoded; its body is dropped):
    the admin API's own answer, asked in process, with the caller's Authorization header."""
    headers = [(b"host", b"ui"), (b"accept", b"application/json")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode("latin-1")))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": quote(path).encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": ("ui", 80),
        "state": {},
    }
    status = 500
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


def install(app: FastAPI) -> None:
    """Serve the placement page on `app` (the admin API's FastAPI app)."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    def shell() -> HTMLResponse:
        # never cached: the page is small and must follow the scheduler's version
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

    @app.get("/ui", include_in_schema=False)
    async def overview() -> HTMLResponse:
        return shell()

    @app.get("/ui/", include_in_schema=False)
    async def overview_slash() -> RedirectResponse:
        return RedirectResponse("/ui")

    @app.get("/ui/models/{model_id:path}", include_in_schema=False, response_model=None)
    async def model_page(model_id: str, request: Request) -> Response:
        if not model_id or "/" in model_id:
            return not_found_page(f"'{shown_id(model_id)}' is not a model id.")
        status = await api_status(app, f"/v1/models/{model_id}", authorization=request.headers.get("authorization"))
        if status in (404, 405, 422):
            return not_found_page(
                f"There is no model '{shown_id(model_id)}': it is not registered, or the id is not valid."
            )
        # 200, or an answer the page itself explains (401: paste a token; 503: retrying)
        return shell()

    @app.get("/ui/{rest:path}", include_in_schema=False, response_model=None)
    async def elsewhere(rest: str) -> Response:
        return not_found_page(f"The placement page has no '/ui/{shown_id(rest)}'.")
