"""Measuring the model server's memory: the physical memory of its whole process tree.

Read from /proc as the proportional set size (`Pss` in smaps_rollup: each shared page
counted once across the processes that map it) of the process and its descendants,
`VmRSS` where smaps_rollup cannot be read. PSS, not RSS, because a model server may run a
process per model (Triton's python backend starts a stub per model, each mapping the same
framework libraries): summed RSS would charge every model the whole framework again, while
the tree's summed PSS grows by what the machine really gave the new model. Where the puller
cannot see the model server's processes (separate containers without a shared process
namespace), the `process_resident_memory_bytes` gauge on its metrics endpoint is used.

Which process is the model server: a pid file where both run on one machine (local mode), or,
in a Kubernetes pod with `shareProcessNamespace` (a pid file does not cross containers, and the
model server's image writes none), a regex on the command lines in /proc (`find_process`): the topmost, oldest matching process that is not the
puller itself. The match is remembered by (pid, start time) and looked up again once that
process is gone (a restarted model-server container).

A load's size is `MemoryProbe.growth(before, after)` of two `snapshot()`s: reading every
process's PSS walks all its mappings (~12 ms for a TensorFlow stub, so a pod of many stubs
paid hundreds of ms per load, twice), so a snapshot reads only each process's RSS (statm),
and the growth takes the new processes' private pages (smaps_rollup, one read each) plus
the old ones' RSS growth, which is what the summed PSS grows by (see `tree_growth`).
`tree_pss_bytes` (summed PSS) stays the pod's total, for heartbeats and benchmarks.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import httpx


def _children(pid: int, *, every_thread: bool = True) -> list[int]:
    """The children of `pid`, as the kernel lists them per thread that forked them: from
    every thread of the model server's main process (tritonserver starts its python-backend
    stubs from loader threads), from the main thread only below it (MLServer's workers and
    Triton's stubs fork nothing from other threads; a TensorFlow stub runs ~50 threads, and
    reading each one's list, for every stub on the pod, twice per load, cost ~20 ms)."""
    if not every_thread:
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _field_kib(path: Path, name: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_memory_bytes(pid: int) -> int | None:
    """PSS of one process (RSS where smaps_rollup is not readable); None once it is gone."""
    kib = _field_kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
    if kib is None:
        kib = _field_kib(Path(f"/proc/{pid}/status"), "VmRSS:")
    return None if kib is None else kib * 1024


def tree_pss_bytes(pid: int) -> int:
    """The tree's physical memory: summed PSS (see the module's docstring)."""
    total, stack, seen = 0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        size = process_memory_bytes(current)
        if size is None:
            continue
        total += size
        stack.extend(_children(current, every_thread=current == pid))
    return total


PAGE = os.sysconf("SC_PAGE_SIZE")


def _process_key(pid: int) -> tuple[int, int] | None:
    """(pid, start time): a pid the kernel reused for another process is another key."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return pid, int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _statm_rss(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def private_bytes(pid: int) -> int | None:
    """Pages only this process maps (smaps_rollup Private_Clean + Private_Dirty): for a
    process that maps a framework's libraries first, they are its private pages."""
    try:
        fields = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Private_Clean", "Private_Dirty"):
                fields[name] = int(rest.split()[0]) * 1024
        if len(fields) == 2:
            return sum(fields.values())
    except (OSError, ValueError, IndexError):
        pass
    return _statm_rss(pid)


def tree_processes(pid: int) -> dict[tuple[int, int], int]:
    """The process tree under `pid`: (pid, start time) -> RSS from statm (cheap to read)."""
    out: dict[tuple[int, int], int] = {}
    stack, seen = [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        key, rss = _process_key(current), _statm_rss(current)
        if key is None or rss is None:
            continue
        out[key] = rss
        stack.extend(_children(current, every_thread=current == pid))
    return out


def tree_growth(before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]) -> int:
    """What the machine gave the tree between two `tree_processes` readings: the private
    pages of each process that is new (a python-backend stub, with its framework's pages if
    it mapped them first), plus the RSS growth of each process that was there before.
    Exited processes are left out (an unload running meanwhile does not make the load look
    smaller). Equal to the growth of the tree's summed PSS when the old processes' shared
    pages stay shared, at the cost of one smaps_rollup read per new process instead of
    one per process, twice."""
    growth = 0
    for key, rss in after.items():
        if key in before:
            growth += rss - before[key]
        else:
            growth += private_bytes(key[0]) or 0
    return growth


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace") if raw else None


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def find_process(pattern: re.Pattern[str], *, exclude: frozenset[int] = frozenset()) -> int | None:
    """The pid of the model server: among the processes whose command line (arguments joined
    by spaces) `pattern` matches, and not in `exclude`, the oldest one with no matching
    ancestor (`sh -c "tritonserver ..."` and its child both match: the tree under the top one
    is the server's). Kernel threads and zombies (empty command lines) never match."""
    matches: dict[int, int] = {}      # pid -> start time
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in exclude:
            continue
        cmd = _cmdline(pid)
        if cmd is None or not pattern.search(cmd):
            continue
        key = _process_key(pid)
        if key is not None:
            matches[pid] = key[1]

    def has_matching_ancestor(pid: int) -> bool:
        seen: set[int] = set()
        current = _ppid(pid)
        while current and current not in seen:
            if current in matches:
                return True
            seen.add(current)
            current = _ppid(current)
        return False

    tops = [pid for pid in matches if not has_matching_ancestor(pid)]
    return min(tops, key=lambda pid: (matches[pid], pid)) if tops else None


class MemoryProbe:
    def __init__(self, *, pid_file: Path | None, metrics_url: str, process_pattern: str = "") -> None:
        self.pid_file = pid_file
        self.metrics_url = metrics_url
        self.process_pattern = re.compile(process_pattern) if process_pattern else None
        self._found: tuple[int, int] | None = None      # (pid, start time) of the last match

    def _pid(self) -> int | None:
        if self.pid_file is not None:
            try:
                pid = int(self.pid_file.read_text().strip())
            except (OSError, ValueError):
                return None
            return pid if os.path.exists(f"/proc/{pid}") else None
        if self.process_pattern is not None:
            return self._discovered()
        return None

    def _discovered(self) -> int | None:
        """The matching process, found again when the remembered one is gone (or its pid reused)."""
        assert self.process_pattern is not None
        if self._found is not None and _process_key(self._found[0]) == self._found:
            return self._found[0]
        pid = find_process(self.process_pattern, exclude=frozenset({os.getpid()}))
        self._found = _process_key(pid) if pid is not None else None
        return pid if self._found is not None else None

    @property
    def available(self) -> bool:
        return self._pid() is not None or bool(self.metrics_url)

    async def snapshot(self) -> dict[tuple[int, int], int] | int | None:
        """A reading to pass to `growth`: the process tree (cheap: statm) where the puller
        sees the model server's processes, else the metrics endpoint's resident memory."""
        pid = self._pid()
        if pid is not None:
            return tree_processes(pid)
        return await self.rss_bytes()

    @staticmethod
    def growth(before: dict[tuple[int, int], int] | int | None, after: dict[tuple[int, int], int] | int | None) -> int | None:
        if isinstance(before, dict) and isinstance(after, dict):
            return tree_growth(before, after)
        if isinstance(before, int) and isinstance(after, int):
            return after - before
        return None

    async def rss_bytes(self) -> int | None:
        pid = self._pid()
        if pid is not None:
            # off the event loop: summed PSS walks every process's mappings (~12 ms per
            # TensorFlow stub), and heartbeats read it every interval, loads in flight or not
            return await asyncio.to_thread(tree_pss_bytes, pid)
        if self.metrics_url:
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    text = (await client.get(self.metrics_url)).text
            except httpx.HTTPError:
                return None
            for line in text.splitlines():
                if line.startswith("process_resident_memory_bytes "):
                    return int(float(line.split()[1]))
        return None
