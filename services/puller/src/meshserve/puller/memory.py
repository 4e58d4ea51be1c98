"""Measuring the model server's memory: the physical memory of its whole process tree.

Read from /proc as the proportional set size (`Pss` in smaps_rollup: each shared page
counted once across the processes that map it) of the process and its descendants,
`VmRSS` where smaps_rollup cannot be read. PSS, not RSS, because a model server may run a
process per model (Triton's python backend starts a stub per model, each mapping the same
framework libraries): summed RSS would charge every model the whole framework again, while
the tree's summed PSS grows by what the machine really gave the new model. Where the puller
cannot see the model server's processes (separate containers without a shared process
namespace), the `process_resident_memory_bytes` gauge on its metrics endpoint is used.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx


def _children(pid: int) -> list[int]:
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


def tree_rss_bytes(pid: int) -> int:
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
        stack.extend(_children(current))
    return total


class MemoryProbe:
    def __init__(self, *, pid_file: Path | None, metrics_url: str) -> None:
        self.pid_file = pid_file
        self.metrics_url = metrics_url

    def _pid(self) -> int | None:
        if self.pid_file is None:
            return None
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if os.path.exists(f"/proc/{pid}") else None

    @property
    def available(self) -> bool:
        return self._pid() is not None or bool(self.metrics_url)

    async def rss_bytes(self) -> int | None:
        pid = self._pid()
        if pid is not None:
            return tree_rss_bytes(pid)
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
