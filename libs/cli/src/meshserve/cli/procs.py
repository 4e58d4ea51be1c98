"""Starting and stopping local processes for `meshserve dev` and the integration tests.

Every child gets its own session (Ctrl-C in the terminal reaches only the supervisor,
which then stops children in reverse order) and PR_SET_PDEATHSIG, so no child outlives
a supervisor that died. Output goes to `<log dir>/<name>.log`; readiness is polled
against a deadline, never slept for.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx


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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

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
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        out = open(log_path, "ab")
        full_env = {**os.environ, **(env or {})}
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        out.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

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

    def stop(self, proc: Proc, *, timeout: float = 10.0) -> int | None:
        if proc.alive:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(5)
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


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        return httpx.get(url, timeout=1.0).status_code == 200

    return check


def tcp_open(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.create_connection((host, port), timeout=0.5):
            return True

    return check
