"""Finding the model server's process by its command line (a pod with shareProcessNamespace):
real child processes, found through /proc as the puller would find them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from meshserve.puller.memory import MemoryProbe, find_process

# waits for stdin to close; its argv carries the marker the pattern looks for
WAITER = "import sys; print('ready', flush=True); sys.stdin.read()"
# a shell-like parent that starts the waiter with the same marker (as `sh -c "tritonserver ..."`)
PARENT = (
    "import subprocess, sys\n"
    f"k = subprocess.Popen([sys.executable, '-c', {WAITER!r}, sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)\n"
    "k.stdout.readline(); print(k.pid, flush=True); sys.stdin.read(); k.stdin.close(); k.wait()\n"
)


def _start(code: str, marker: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code, marker], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()      # "ready" (or the child's pid): it runs and its cmdline is set
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.fixture
def marker() -> str:
    return f"fake-model-server-{uuid.uuid4().hex}"


@pytest.fixture
def server(marker: str) -> Iterator[subprocess.Popen[str]]:
    proc = _start(WAITER, marker)
    yield proc
    if proc.poll() is None:
        _stop(proc)


def test_the_process_whose_command_line_matches_is_found(server: subprocess.Popen[str], marker: str) -> None:
    assert find_process(re.compile(re.escape(marker))) == server.pid
    assert find_process(re.compile(re.escape(marker)), exclude=frozenset({server.pid})) is None
    assert find_process(re.compile(f"{re.escape(marker)}-not-running")) is None


def test_a_matching_parent_is_preferred_to_its_matching_child(marker: str) -> None:
    parent = _start(PARENT, marker)
    try:
        assert find_process(re.compile(re.escape(marker))) == parent.pid
    finally:
        _stop(parent)


def test_the_probe_measures_the_found_process_and_finds_a_restarted_one(server: subprocess.Popen[str], marker: str) -> None:
    probe = MemoryProbe(pid_file=None, metrics_url="", process_pattern=re.escape(marker))
    assert probe.available
    assert probe._pid() == server.pid
    _stop(server)                                   # the model-server container restarts
    assert not probe.available
    again = _start(WAITER, marker)
    try:
        assert probe._pid() == again.pid
    finally:
        _stop(again)


async def test_snapshots_of_the_found_process_tree(server: subprocess.Popen[str], marker: str) -> None:
    probe = MemoryProbe(pid_file=None, metrics_url="", process_pattern=re.escape(marker))
    snapshot = await probe.snapshot()
    assert isinstance(snapshot, dict) and [pid for pid, _ in snapshot] == [server.pid]
    assert MemoryProbe.growth(snapshot, await probe.snapshot()) is not None
    rss = await probe.rss_bytes()
    assert rss is not None and rss > 0


def test_the_puller_itself_is_never_the_model_server(server: subprocess.Popen[str], marker: str) -> None:
    """A pattern that also matches the puller's own command line (here: pytest's python) finds
    another process, never the puller."""
    probe = MemoryProbe(pid_file=None, metrics_url="", process_pattern=f"{re.escape(marker)}|pytest")
    assert probe._pid() not in (None, os.getpid())
