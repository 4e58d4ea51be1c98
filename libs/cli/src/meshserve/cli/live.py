"""The live commands of `meshserve`: `load` (with its progress), `apply --wait`, `top pods|models`,
`logs <pod>`, and the admin API calls they and `get` share.

Owns the talk to the scheduler's admin API for the CLI: every call goes through
`admin_response`, which turns a connection failure into `watching.Unreachable` with one line
naming the URL, and `admin`, which turns a refusal into `CommandError` with the API's own
message; `meshserve.cli.main.main` prints either as one line and exits 1, never a traceback.
The decisions and formatting live in `watching`, `top` and `podlogs`; this module only wires
them to the API, the terminal and Ctrl-C (`stop_on_signals`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(lines)


def resource_client(args: argparse.Namespace) -> Any:
    from meshserve.cli.resources import AdminClient

    return AdminClient(args.admin, token=admin_token())


def admin_token() -> str | None:
    return os.environ.get("MESHSERVE_ADMIN_TOKEN") or None


def admin_response(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    """One admin API call; an unreachable scheduler is `watching.Unreachable` (one line, no traceback)."""
    import httpx

    from meshserve.cli.watching import Unreachable

    headers = {}
    token = admin_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = args.admin.rstrip("/")
    try:
        return httpx.request(method, f"{url}{path}", headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)
    except httpx.HTTPError as err:
        raise Unreachable(f"cannot reach the scheduler admin API at {url} ({type(err).__name__}: {err or 'no answer'}); "
                          "is the stack running (meshserve dev)? --admin or MESHSERVE_ADMIN_URL name another") from None


def error_of(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return str(response.text).strip()[:300]
    return str(body.get("error") or body.get("detail") or body) if isinstance(body, dict) else str(body)


class CommandError(Exception):
    """The admin API refused the request; `main` prints the message as one line and exits 1."""


def admin(args: argparse.Namespace, method: str, path: str) -> Any:
    response = admin_response(args, method, path)
    if response.status_code >= 400:
        raise CommandError(f"{error_of(response)} (HTTP {response.status_code})")
    return response.json()


def stop_on_signals() -> threading.Event:
    """An event Ctrl-C and SIGTERM set: long-running commands wait on it, so they end cleanly."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def models(args: argparse.Namespace) -> list[dict[str, Any]]:
    from meshserve.cli.watching import Unreachable

    response = admin_response(args, "GET", "/v1/models?limit=1000")
    if response.status_code >= 400:
        raise Unreachable(f"the admin API answered {response.status_code}: {error_of(response)}")
    return list(response.json()["items"])


ASK_AGAIN_SECONDS = 2.0


def wait_for_models(args: argparse.Namespace, names: list[str]) -> int:
    """`apply --wait`: each InferenceService's / Predictor's progress (its vmodel) until Loaded or failed."""
    import time
    from urllib.parse import quote

    from meshserve.cli import watching

    stop = stop_on_signals()
    deadline = time.monotonic() + args.timeout
    failed = 0
    asking: dict[str, tuple[threading.Thread, float]] = {}

    def ask_load(model_id: str) -> None:
        # a model that stands by (registered while its runtime had no pod yet, say) loads at
        # its first request; --wait asks for that load itself, without waiting on the call, and
        # asks again (every ASK_AGAIN_SECONDS at most) while it still stands by after an answer
        current = asking.get(model_id)
        if current is not None and (current[0].is_alive() or time.monotonic() - current[1] < ASK_AGAIN_SECONDS):
            return
        path = f"/v1/models/{quote(model_id, safe='')}:load"
        worker = threading.Thread(target=lambda: _quietly(admin_response, args, "POST", path, timeout=args.timeout),
                                  name=f"load-{model_id}", daemon=True)
        asking[model_id] = (worker, time.monotonic())
        worker.start()

    for name in names:
        def poll(name: str = name) -> watching.Progress:
            response = admin_response(args, "GET", f"/v1/vmodels/{quote(name, safe='')}", timeout=10)
            view = response.json() if response.status_code == 200 else None
            progress = watching.vmodel_progress(view)
            model_id = str((view or {}).get("targetModelId") or (view or {}).get("activeModelId") or "")
            if progress.state == "Standby" and model_id:
                ask_load(model_id)
            return progress

        last = watching.follow_progress(name, poll, out=sys.stdout, stop=stop, tty=sys.stdout.isatty(),
                                        timeout=max(0.0, deadline - time.monotonic()))
        if stop.is_set():
            return 130
        if last.state != "Loaded":
            failed += 1
            why = f": {last.detail}" if last.state == "FailedToLoad" and last.detail else ""
            print(f"error: {name} is {last.state}{why}", file=sys.stderr)
    return 1 if failed else 0


def _quietly(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Call `fn`, ignoring an unreachable API (the progress poll reports what happens)."""
    from meshserve.cli.watching import Unreachable

    try:
        fn(*args, **kwargs)
    except Unreachable:
        pass


def cmd_load(args: argparse.Namespace) -> int:
    """Load a registered model and show its progress (Loading -> Loaded, with the time taken)."""
    from urllib.parse import quote

    from meshserve.cli import watching

    path = f"/v1/models/{quote(args.model, safe='')}"
    first = admin_response(args, "GET", path)
    if first.status_code == 404:
        print(f"error: {error_of(first)}; `meshserve get models` lists the registered ones", file=sys.stderr)
        return 1
    if first.status_code >= 400:
        print(f"error: {error_of(first)} (HTTP {first.status_code})", file=sys.stderr)
        return 1
    answer: dict[str, Any] = {}

    def call() -> None:
        try:
            answer["response"] = admin_response(args, "POST", f"{path}:load", timeout=args.timeout + 5)
        except watching.Unreachable as err:
            answer["error"] = str(err)

    def poll() -> watching.Progress:
        response = admin_response(args, "GET", path, timeout=10)
        return watching.model_progress(response.json() if response.status_code == 200 else None)

    worker = threading.Thread(target=call, name="load", daemon=True)
    worker.start()
    stop = stop_on_signals()
    last = watching.follow_progress(args.model, poll, out=sys.stdout, stop=stop, timeout=args.timeout,
                                    tty=sys.stdout.isatty(), finished=lambda: not worker.is_alive())
    if stop.is_set():
        return 130
    if "error" in answer:
        print(f"error: {answer['error']}", file=sys.stderr)
        return 1
    response = answer.get("response")
    if response is not None and response.status_code >= 400:
        print(f"error: loading {args.model}: {error_of(response)} (HTTP {response.status_code})", file=sys.stderr)
        return 1
    if last.state != "Loaded":
        print(f"error: {args.model} is {last.state} after {args.timeout:.0f}s", file=sys.stderr)
        return 1
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    """Live usage of pods or models: admin API placement + router metrics, every --interval seconds."""
    import time

    from meshserve.cli import top, watching

    stop = stop_on_signals()
    urls = args.metrics or [os.environ.get("MESHSERVE_ROUTER_METRICS_URL", "http://127.0.0.1:8008/metrics")]

    def sample() -> tuple[top.RouterSample | None, str]:
        try:
            return top.merge([top.scrape(u) for u in urls]), ""
        except watching.Unreachable as err:
            return None, str(err)

    def frame(window: top.Window | None, error: str) -> str:
        if args.what == "models":
            header, rows = top.MODEL_HEADER, top.model_rows(models(args), window)
        else:
            pods = admin(args, "GET", "/v1/pods")["items"]
            header, rows = top.POD_HEADER, top.pod_rows(pods, models(args), window)
        text = table(rows, header)
        note = top.footer(window, metrics_error=error)
        return text + (f"\n{note}" if note else "")

    try:
        older, error = sample()
        then = time.monotonic()
        if args.once:
            if older is not None and not stop.wait(args.interval):
                newer, error = sample()
                now = time.monotonic()
                window = top.Window(newer, older, now - then) if newer is not None else None
            else:
                window = top.Window(older) if older is not None else None
            print(frame(window, error))
            return 0
        tty = sys.stdout.isatty()
        window = top.Window(older) if older is not None else None
        while True:
            text = frame(window, error)
            print(("\x1b[H\x1b[2J" if tty else "") + text + ("" if tty else "\n"), flush=True)
            if stop.wait(args.interval):
                return 0
            newer, error = sample()
            now = time.monotonic()
            if newer is None:
                window = None
            else:
                window = top.Window(newer, older, now - then) if older is not None else top.Window(newer)
                older, then = newer, now
    except watching.Unreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def cmd_logs(args: argparse.Namespace, *, default_root: Path) -> int:
    """The logs of a local runtime pod's processes (model server and puller)."""
    from meshserve.cli import podlogs, resources, watching

    root = Path(args.local_root) if args.local_root else default_root
    log_dir = root / "logs"

    def lookup() -> dict[str, dict[str, Path]]:
        client = resource_client(args)
        try:
            status = resources.local_pod_status(client, namespace=args.namespace)
        finally:
            client.close()
        try:
            response = admin_response(args, "GET", "/v1/pods", timeout=5)
            registered = [p["id"] for p in response.json()["items"]] if response.status_code == 200 else None
        except watching.Unreachable:
            registered = None
        return podlogs.known_pods(status=status, registered=registered, log_dir=log_dir)

    try:
        files = podlogs.pick(lookup(), args.pod, args.container, log_dir=log_dir)
    except podlogs.PodNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    offsets = podlogs.show(files, out=sys.stdout, tail=args.tail)
    if not args.follow:
        return 0

    def refresh() -> dict[str, Path] | None:
        try:
            return podlogs.pick(lookup(), args.pod, args.container, log_dir=log_dir)
        except podlogs.PodNotFound:
            return None   # gone for now (stopped, restarting): keep following what we had

    podlogs.follow(files, offsets, out=sys.stdout, stop=stop_on_signals(), refresh=refresh)
    return 0
