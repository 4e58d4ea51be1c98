"""Starting and stopping local processes for `meshserve dev` and the integration tests.

Every child gets its own session (Ctrl-C in the terminal reaches only the supervisor,
which then stops children in reverse order) and PR_SET_PDEATHSIG, so no child outlives
a supervisor that died. Output goes to `<log dir>/<name>.log`; readiness is polled
against a deadline, never slept for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from meshserve.common.childproc import dying_with_parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None   # what was given to `start` (on top of os.environ)
    cwd: Path | None = None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class StartupError(RuntimeError):
    pass


@dataclass
class ProcessGroup:
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
        proc = self._spawn(name, argv, env=env, cwd=cwd)
        self.procs.append(proc)
        return proc

    def find(self, name: str) -> Proc | None:
        return next((p for p in self.procs if p.name == name), None)

    def respawn(self, proc: Proc, *, grace: float = 10.0, note: str = "") -> Proc:
        """Start `proc`'s command again (same argv, env, cwd: same ports and data) in its place
        in the stop order, once the leader and anything left in its process group are gone
        (given `grace` seconds to exit after the leader died, then SIGKILL)."""
        self.stop(proc, remove=False)
        reap_group(proc.popen.pid, grace=grace)
        if note:
            with open(proc.log_path, "ab") as out:
                out.write(f"\n--- {note} ---\n".encode())
        new = self._spawn(proc.name, proc.argv, env=proc.env, cwd=proc.cwd)
        try:
            self.procs[self.procs.index(proc)] = new
        except ValueError:
            self.procs.append(new)
        return new

    def _spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None, cwd: Path | None) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        out = open(log_path, "ab")
        full_env = {**os.environ, **(env or {})}
        popen = subprocess.Popen(
            dying_with_parent(argv),   # PR_SET_PDEATHSIG without a preexec_fn (common.childproc)
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        out.close()
        return Proc(name, popen, log_path, argv=list(argv), env=dict(env) if env is not None else None, cwd=cwd)

    def wait_until(self, proc: Proc | None, check: Callable[[], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive:
                raise StartupError(f"{proc.name} exited with code {proc.popen.returncode} while {what}:\n{proc.tail()}")
            try:
                if check():
                    return
            except Exception:
                pass
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        tail = proc.tail() if proc is not None else ""
        raise StartupError(f"timed out after {timeout:.0f}s {what}\n{tail}")

    def stop(self, proc: Proc, *, timeout: float = 10.0, remove: bool = True) -> int | None:
        if proc.alive:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(5)
        if remove:
            with contextlib.suppress(ValueError):
                self.procs.remove(proc)
        return proc.popen.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)
        for fn in reversed(self.on_stop):
            with contextlib.suppress(Exception):
                fn()
        self.on_stop.clear()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()   # after "(comm)": state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def reap_group(pgid: int, *, grace: float) -> None:
    """Wait up to `grace` seconds for process group `pgid` (a child started in its own
    session, leader already gone) to empty, then SIGKILL what is left. A child such as the
    controller's runtime pod supervisor gets `grace` to stop what it started."""
    deadline = time.monotonic() + grace
    delay = 0.02
    while group_members(pgid):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        return httpx.get(url, timeout=1.0).status_code == 200

    return check


def tcp_open(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.create_connection((host, port), timeout=0.5):
            return True

    return check
