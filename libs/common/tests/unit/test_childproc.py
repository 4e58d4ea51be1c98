"""dying_with_parent: the program runs under its own pid with its argv, and gets SIGTERM
when the process that started it is killed with SIGKILL (real processes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from meshserve.common.childproc import dying_with_parent


def _alive(pid: int) -> bool:
    """Running (a zombie no one has reaped yet has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_program_keeps_its_pid_argv_and_exit_code() -> None:
    proc = subprocess.Popen(
        dying_with_parent([sys.executable, "-c", "import os, sys; print(os.getpid(), sys.argv[1:]); sys.exit(3)", "a b", "c"]),
        stdout=subprocess.PIPE, text=True,
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert out.split(" ", 1) == [str(proc.pid), "['a b', 'c']\n"]


def test_a_child_gets_sigterm_when_its_parent_is_killed() -> None:
    parent_code = textwrap.dedent("""
        import subprocess, sys, time
        from meshserve.common.childproc import dying_with_parent
        child = subprocess.Popen(dying_with_parent([sys.executable, "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); print('up', flush=True); time.sleep(120)"]),
            stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "up\\n"
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)
