"""The puller's memory probe on real processes: a child that allocates, one that exits."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from meshserve.puller.memory import tree_growth, tree_processes, tree_pss_bytes

MiB = 1 << 20

# a process that holds `n` MiB of its own pages, says so, and waits for stdin to close
HOLDER = "import sys; n = int(sys.argv[1]); b = bytearray(n << 20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True); sys.stdin.read()"


@pytest.fixture
def parent() -> Iterator[subprocess.Popen[str]]:
    """A parent process (the 'model server') whose children are its 'stubs'."""
    script = (
        "import subprocess, sys\n"
        "kids = []\n"
        "for line in sys.stdin:\n"
        "    cmd, _, arg = line.strip().partition(' ')\n"
        "    if cmd == 'spawn':\n"
        f"        k = subprocess.Popen([sys.executable, '-c', {HOLDER!r}, arg], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)\n"
        "        k.stdout.readline(); kids.append(k)\n"
        "    elif cmd == 'kill':\n"
        "        k = kids.pop(); k.stdin.close(); k.wait()\n"
        "    print('done', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield proc
    proc.stdin.close()  # type: ignore[union-attr]
    proc.wait(timeout=30)


def _do(proc: subprocess.Popen[str], command: str) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "done"


def test_a_new_child_is_charged_its_private_pages(parent: subprocess.Popen[str]) -> None:
    before = tree_processes(parent.pid)
    _do(parent, "spawn 64")
    after = tree_processes(parent.pid)
    assert len(after) == len(before) + 1
    grown = tree_growth(before, after)
    assert 64 * MiB <= grown < 64 * MiB + 40 * MiB  # the buffer + one interpreter's own pages


def test_an_exiting_child_does_not_make_a_load_look_smaller(parent: subprocess.Popen[str]) -> None:
    _do(parent, "spawn 32")
    before = tree_processes(parent.pid)
    _do(parent, "kill")       # an unload meanwhile
    _do(parent, "spawn 48")   # the load being measured
    grown = tree_growth(before, tree_processes(parent.pid))
    assert 48 * MiB <= grown < 48 * MiB + 40 * MiB


def test_growth_agrees_with_the_trees_summed_pss(parent: subprocess.Popen[str]) -> None:
    _do(parent, "spawn 16")
    before, pss_before = tree_processes(parent.pid), tree_pss_bytes(parent.pid)
    _do(parent, "spawn 80")
    grown, pss_grown = tree_growth(before, tree_processes(parent.pid)), tree_pss_bytes(parent.pid) - pss_before
    assert abs(grown - pss_grown) < 16 * MiB, (grown / MiB, pss_grown / MiB)
