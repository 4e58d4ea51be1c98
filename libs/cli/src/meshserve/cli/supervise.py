"""Keeps the processes of a local stack running: what `meshserve dev` does after start-up.

Owns: noticing that a process of the stack died (Redis, Postgres, S3, scheduler, router,
controller, and the extra runtime pods of `meshserve dev --pods N`), starting it again the
way it was started (same command and environment, so the same ports and the same data
directory), waiting until it serves again, and saying so. The decisions (restart after
which back-off, or give up) are `restarts.decide_restart`'s; this module only applies them.

Never restarts anything on its own initiative but a death, and never stops the stack: when
a process keeps crashing, `Supervisor.poll` raises `CrashLoop` (its message names the process
and ends with the tail of its log) and the caller stops everything.

What "data kept" means per process: Postgres restarts on its data directory (what the
registry and the resource store hold survives); Redis restarts on its port and folder
(it keeps no data: `--save ""`, and the scheduler rebuilds live state from the pullers'
heartbeats and Postgres); moto's S3 keeps objects in memory only, so `after_s3_restart`
(the dev command's re-upload of the example models) runs after it comes back.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meshserve.cli.procs import Proc, ProcessGroup, http_ok, tcp_open
from meshserve.cli.restarts import (
    DEV_POLICY,
    GiveUp,
    RestartHistory,
    RestartPolicy,
    decide_restart,
    describe_exit,
)

if TYPE_CHECKING:
    from meshserve.cli.devstack import PodHandle, Stack

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
CONTROLLER_GRACE = 30.0
"""Seconds the controller's runtime pod supervisor gets to stop its pods after the controller died."""


class CrashLoop(RuntimeError):
    """A process exited more often than the policy allows; the message says which and why."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass
class Unit:
    """One thing to keep running: how to tell it is alive, how to start it again (and wait
    until it serves; raise if it does not), and where its log is."""

    name: str
    alive: Callable[[], bool]
    restart: Callable[[str], None]
    """Called with a note for the log ("restart 2 by meshserve dev")."""
    exit_reason: Callable[[], str]
    tail: Callable[[], str]
    started_at: float = 0.0
    history: RestartHistory = field(default_factory=RestartHistory)
    restart_at: float | None = None
    """Set while the unit is dead and waits for its back-off."""
    restarts: int = 0


@dataclass
class Supervisor:
    units: list[Unit]
    notify: Callable[[str], None]
    policy: RestartPolicy = DEV_POLICY
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        now = self.clock()
        for unit in self.units:
            unit.started_at = unit.started_at or now

    def poll(self) -> None:
        """One pass: notice deaths, start what is due. Raises `CrashLoop` to give up."""
        for unit in self.units:
            now = self.clock()
            if unit.restart_at is None:
                if not unit.alive():
                    self._exited(unit, unit.exit_reason(), now)
            elif now >= unit.restart_at:
                self._restart(unit)

    def run(self, stop: threading.Event, *, interval: float = 0.5) -> None:
        """Until `stop` is set (Ctrl-C); raises `CrashLoop` when a process keeps crashing."""
        while not stop.wait(interval):
            self.poll()

    def _exited(self, unit: Unit, why: str, now: float) -> None:
        unit.history, decision = decide_restart(
            unit.history, now=now, ran_for=now - unit.started_at, policy=self.policy, rand=self.rand()
        )
        if isinstance(decision, GiveUp):
            tail = unit.tail().strip() or "(empty)"
            raise CrashLoop(
                unit.name,
                f"{unit.name} keeps crashing ({decision.reason}; last it {why}): giving up and stopping "
                f"the stack. Last lines of its log:\n{tail}",
            )
        unit.restart_at = now + decision.delay
        self.notify(f"{unit.name} {why}; restarting it in {decision.delay:.1f}s (restart {unit.restarts + 1})")

    def _restart(self, unit: Unit) -> None:
        unit.restart_at = None
        unit.restarts += 1
        try:
            unit.restart(f"restart {unit.restarts} by meshserve dev")
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self._exited(unit, f"did not come back ({first})", self.clock())
            return
        unit.started_at = self.clock()
        self.notify(f"{unit.name} restarted (restart {unit.restarts})")


# -- the units of a Stack ----------------------------------------------------------------------

def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def process_unit(
    group: ProcessGroup, name: str, *, ready: Callable[[], bool] | None = None, after: Callable[[], None] | None = None,
    grace: float = 10.0, on_respawn: Callable[[Proc], None] | None = None,
) -> Unit:
    """The process `name` of `group`, restarted with its own command (`ProcessGroup.respawn`),
    then `ready` polled until true and `after` run."""

    def restart(note: str) -> None:
        proc = group.find(name)
        if proc is None:
            raise RuntimeError(f"{name} is not part of the stack any more")
        proc = group.respawn(proc, grace=grace, note=note)
        if on_respawn is not None:
            on_respawn(proc)
        if ready is not None:
            group.wait_until(proc, ready, timeout=READY_TIMEOUT, what=f"restarting {name}")
        if after is not None:
            after()

    def exit_reason() -> str:
        proc = group.find(name)
        return describe_exit(proc.popen.returncode if proc is not None else None)

    def tail() -> str:
        proc = group.find(name)
        return proc.tail() if proc is not None else ""

    return Unit(
        name=name,
        alive=lambda: (p := group.find(name)) is not None and p.alive,
        restart=restart,
        exit_reason=exit_reason,
        tail=tail,
    )


def postmaster_pid(data_dir: Path) -> int | None:
    """The PID in a PostgreSQL data directory's postmaster.pid, when that process lives."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return None if state == "Z" else pid


def _postgres_unit(stack: Stack) -> Unit:
    pg = stack.postgres
    assert pg is not None
    log_file = pg.data_dir / "server.log"

    def tail() -> str:
        try:
            return "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""

    return Unit(
        name="postgres",
        alive=lambda: postmaster_pid(pg.data_dir) is not None,
        restart=lambda note: pg.start(),   # pg_ctl start -w on the same data directory and port
        exit_reason=lambda: "is gone (no live postmaster)",
        tail=tail,
    )


def _pod_unit(stack: Stack, pod_id: str) -> Unit:
    def handle() -> PodHandle | None:
        return next((p for p in stack.pods if p.pod_id == pod_id), None)

    def procs() -> list[Proc]:
        h = handle()
        return [p for p in (h.puller, h.mlserver) if isinstance(p, Proc)] if h is not None else []

    def restart(note: str) -> None:
        old = handle()
        for proc in procs():
            stack.group.stop(proc)
        if old is not None:
            stack.pods.remove(old)
        stack.wait_for_pods([stack.start_pod(pod_id=pod_id)])   # same pod id and folder, new ports

    def exit_reason() -> str:
        dead = [p for p in procs() if not p.alive]
        return ", ".join(f"its {p.name.removeprefix(pod_id + '-')} {describe_exit(p.popen.returncode)}" for p in dead) or "is gone"

    return Unit(
        name=pod_id,
        alive=lambda: bool(procs()) and all(p.alive for p in procs()),
        restart=restart,
        exit_reason=exit_reason,
        tail=lambda: "\n".join(p.tail(20) for p in procs()),
    )


def stack_units(stack: Stack, *, after_s3_restart: Callable[[], None] | None = None) -> list[Unit]:
    """What a started `Stack` runs, in start order; infrastructure given from outside
    (MESHSERVE_REDIS_URL, ...) is not ours to restart."""
    group, units = stack.group, []
    names = {p.name for p in group.procs}

    def keep_refs(proc: Proc) -> None:
        if proc.name == "scheduler":
            stack.scheduler_proc = proc
        elif proc.name == "router":
            stack.router_proc = proc

    if "redis" in names:
        units.append(process_unit(group, "redis", ready=tcp_open("127.0.0.1", _port_of(stack.redis_url))))
    if stack.postgres is not None:
        units.append(_postgres_unit(stack))
    if "s3" in names:
        units.append(process_unit(group, "s3", ready=tcp_open("127.0.0.1", _port_of(stack.s3_endpoint)), after=after_s3_restart))
    if "scheduler" in names:
        units.append(process_unit(group, "scheduler", ready=http_ok(f"{stack.admin_url}/readyz"), on_respawn=keep_refs))
    if "router" in names:
        rest_ready = http_ok(f"{stack.router_rest}/readyz")
        units.append(process_unit(group, "router", ready=lambda: stack._router_ready() and rest_ready(), on_respawn=keep_refs))
    if "controller" in names:
        ready = http_ok(f"{stack.controller_health}/readyz") if stack.controller_health else None
        units.append(process_unit(group, "controller", ready=ready, grace=CONTROLLER_GRACE))
    units.extend(_pod_unit(stack, pod.pod_id) for pod in stack.pods)
    known = {u.name for u in units} | {f"{p.pod_id}-{kind}" for p in stack.pods for kind in ("mlserver", "puller")}
    units.extend(process_unit(group, name) for name in sorted(names - known))
    return units


def printer(stream: object) -> Callable[[str], None]:
    """`notify` for a terminal: one timestamped line per event."""
    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=stream, flush=True)  # type: ignore[arg-type]
        log.info("%s", message)

    return say

