"""Measuring the model server's memory: resident set of its whole process tree.

Read from /proc (`VmRSS` of the process and its descendants), or, where the puller
cannot see the model server's processes (separate containers without a shared process
namespace), from the `process_resident_memory_bytes` gauge on its metrics endpoint.
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


def tree_rss_bytes(pid: int) -> int:
    total, stack, seen = 0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
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
