"""`meshserve get models -w` and the progress of a load (`meshserve load`, `meshserve apply --wait`).

Owns: polling the scheduler's admin API (there is no watch endpoint for models; the
resources' long poll `/v1/resources:watch` covers only the stored documents) and turning
successive snapshots into lines, the way `kubectl get -w` does: the table once, then one row
each time a model is registered, changes state (Loading, Loaded, FailedToLoad, Standby),
gains or loses a copy, or is unregistered. Request counts change with every inference and
are not a change here.

Never busy-loops: every wait is `stop.wait(interval)` on a `threading.Event`, which Ctrl-C
(or SIGTERM) sets. The decisions (`model_changes`, `describe_progress`) are pure and take
their inputs (snapshots, elapsed time) as arguments.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

Model = Mapping[str, Any]

MODEL_HEADER = ["MODEL", "FORMAT", "STATE", "COPIES", "SIZE", "REQUESTS"]
WATCH_HEADER = [*MODEL_HEADER, "PODS"]
GONE = "Unregistered"


def mib(n: int | None) -> str:
    return "-" if not n else f"{n / (1 << 20):.1f}Mi"


def model_size(m: Model) -> int | None:
    sizes = m.get("sizes") or {}
    return sizes.get("measured") or sizes.get("predicted") or sizes.get("declared")


def model_row(m: Model) -> list[str]:
    """`get models`' columns."""
    return [str(m["id"]), str(m.get("format") or "-"), str(m.get("state") or "-"), str(len(m.get("copies") or [])),
            mib(model_size(m)), str(m.get("requests", "-"))]


def watch_row(m: Model) -> list[str]:
    """`get models -w`' columns: `get models`' and where each copy is (`pod-0:loaded`)."""
    copies = ",".join(f"{c['pod']}:{c['state']}" for c in m.get("copies") or []) or "-"
    return [*model_row(m), copies]


def _signature(m: Model) -> tuple[Any, ...]:
    """What counts as a change of a model (not its request count)."""
    failure = m.get("lastFailure") or {}
    return (
        m.get("state"),
        tuple(sorted((str(c.get("pod")), str(c.get("state"))) for c in m.get("copies") or [])),
        model_size(m),
        failure.get("reason"), failure.get("time"),
    )


def model_changes(before: Mapping[str, Model] | None, after: Mapping[str, Model]) -> list[list[str]]:
    """The rows to print going from snapshot `before` to `after` (model id -> model): every
    model of `after` when `before` is None (the first table), else the new and changed ones in
    `after`'s order, then the ones gone (state `Unregistered`)."""
    if before is None:
        return [watch_row(m) for m in after.values()]
    rows = [watch_row(m) for mid, m in after.items() if mid not in before or _signature(before[mid]) != _signature(m)]
    for mid, m in before.items():
        if mid not in after:
            rows.append([*watch_row({**m, "state": GONE, "copies": []})])
    return rows


class Columns:
    """A table printed row by row: widths fixed by the first rows (as `kubectl get -w`),
    wider values push only their own line."""

    def __init__(self, header: Sequence[str], first: Sequence[Sequence[str]], *, out: TextIO) -> None:
        self.widths = [max(len(str(x)) for x in col) for col in zip(header, *first, strict=False)]
        self.out = out
        self.line(header)
        for row in first:
            self.line(row)

    def line(self, row: Sequence[str]) -> None:
        text = "   ".join(str(c).ljust(w) for c, w in zip(row, self.widths, strict=False)).rstrip()
        print(text, file=self.out, flush=True)


class Unreachable(Exception):
    """The admin API did not answer (connection refused, timeout); the message says where."""


def watch_models(
    fetch: Callable[[], Sequence[Model]], *, out: TextIO, err: TextIO, stop: threading.Event, interval: float = 1.0,
) -> int:
    """Print the models, then every change, until `stop` is set. A first fetch that fails is
    an error (exit 1); a later one is reported once on `err` and the watch goes on, so a
    scheduler restarted by `meshserve dev` does not end it."""
    try:
        snapshot = {str(m["id"]): m for m in fetch()}
    except Unreachable as e:
        print(f"error: {e}", file=err, flush=True)
        return 1
    table = Columns(WATCH_HEADER, model_changes(None, snapshot), out=out)
    lost = False
    while not stop.wait(interval):
        try:
            current = {str(m["id"]): m for m in fetch()}
        except Unreachable as e:
            if not lost:
                print(f"warning: {e}; still watching", file=err, flush=True)
                lost = True
            continue
        if lost:
            print("warning: the admin API answers again", file=err, flush=True)
            lost = False
        for row in model_changes(snapshot, current):
            table.line(row)
        snapshot = current
    return 0


# -- progress of a load ------------------------------------------------------------------------

@dataclass(frozen=True)
class Progress:
    state: str          # Pending (not registered yet), Standby, Loading, Loaded, FailedToLoad
    detail: str = ""    # pods, or the failure's message

    @property
    def done(self) -> bool:
        return self.state in ("Loaded", "FailedToLoad")


def model_progress(m: Model | None) -> Progress:
    """A model's load progress from its admin API view (None: not registered yet)."""
    if m is None:
        return Progress("Pending", "not registered yet")
    state = str(m.get("state") or "Standby")
    copies = m.get("copies") or []
    if state == "FailedToLoad":
        failure = m.get("lastFailure") or {}
        return Progress(state, ": ".join(str(x) for x in (failure.get("reason"), failure.get("message")) if x))
    if state == "Loaded":
        return Progress(state, "on " + ", ".join(sorted(str(c["pod"]) for c in copies if c.get("state") == "loaded")))
    loading = sorted(str(c["pod"]) for c in copies if c.get("state") == "loading")
    return Progress(state, f"on {', '.join(loading)}" if loading else "")


def vmodel_progress(v: Model | None) -> Progress:
    """An InferenceService's progress from its vmodel (the controller registers it as one):
    done when the active model is Loaded and no other target waits, or the target failed."""
    if v is None:
        return Progress("Pending", "waiting for the controller to register it")
    active, target = v.get("activeState"), v.get("targetState")
    errors = "; ".join(str(e) for e in v.get("targetErrors") or [])
    if target == "FailedToLoad" or (active == "FailedToLoad" and not target):
        return Progress("FailedToLoad", errors)
    if target and target != "Loaded":
        return Progress(str(target), f"model {v.get('targetModelId')}")
    return Progress(str(active or "Standby"), f"model {v.get('activeModelId')}")


def describe_progress(name: str, p: Progress, *, elapsed: float) -> str:
    """One progress line: `example: Loading on pod-0 (1.2s)`."""
    detail = f" {p.detail}" if p.detail and not p.detail.startswith(("on ", "model ")) else ""
    where = f" {p.detail}" if p.detail.startswith(("on ", "model ")) else ""
    return f"{name}: {p.state}{where}{':' if detail else ''}{detail} ({elapsed:.1f}s)"


def follow_progress(
    name: str, poll: Callable[[], Progress], *, out: TextIO, stop: threading.Event, interval: float = 0.25,
    timeout: float = 300.0, tty: bool = False, clock: Callable[[], float] = time.monotonic,
    finished: Callable[[], bool] = lambda: False,
) -> Progress:
    """Show `name`'s state until it is done (Loaded / FailedToLoad), `stop` is set, `timeout`
    passes, or `finished()` says the caller's own call returned (its answer then decides). A
    terminal gets one line rewritten in place with the elapsed time; anything else one line per
    state change. Returns the last state seen."""
    start = clock()
    last: Progress | None = None
    shown = ""
    while True:
        ending = finished()   # read before the poll, so the state shown is the one after the call
        try:
            p = poll()
        except Unreachable:
            p = last or Progress("Pending", "")
        elapsed = clock() - start
        if p != last:
            if tty and shown:
                print(file=out)
            shown = describe_progress(name, p, elapsed=elapsed)
            print(shown, end="" if tty and not p.done else "\n", file=out, flush=True)
        elif tty and not p.done:
            shown = describe_progress(name, p, elapsed=elapsed)
            print("\r" + shown, end="", file=out, flush=True)
        last = p
        if p.done or ending or elapsed >= timeout or stop.wait(interval):
            if tty and not p.done:
                print(file=out, flush=True)
            return p
