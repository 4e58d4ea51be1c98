"""Per-process memory from /proc, finer than the puller's summed PSS: for telling a Triton
python-backend stub's own pages from the framework pages it shares with other stubs.

For one process, `smaps_rollup` gives RSS (every page it maps), PSS (each page divided
by the number of processes mapping it), and private pages (mapped by it alone: what
stopping it would give back). RSS - private is what it shares with other processes,
here mostly the framework's libraries and Python's own pages that every stub maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Rollup:
    rss: int
    pss: int
    private: int

    @property
    def shared(self) -> int:
        return self.rss - self.private


def rollup(pid: int) -> Rollup | None:
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1]) * 1024
    except OSError:
        return None
    return Rollup(
        rss=fields.get("Rss", 0),
        pss=fields.get("Pss", 0),
        private=fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    )


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def triton_stubs(server_pid: int) -> dict[str, int]:
    """Model name -> pid of its python-backend stub, among tritonserver's children (the
    stub's first argument is `<repository>/<model>/<version>/model.py`)."""
    out = {}
    for pid in children(server_pid):
        args = cmdline(pid)
        if args and args[0].endswith("triton_python_backend_stub") and len(args) > 1:
            parts = Path(args[1]).parts
            if len(parts) >= 3:
                out[parts[-3]] = pid
    return out
