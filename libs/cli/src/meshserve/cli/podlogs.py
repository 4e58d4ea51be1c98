"""`meshserve logs <pod>` in local mode: the log of a runtime pod's processes (the model
server and the puller), whole or followed (`-f`), like `kubectl logs`.

Where the logs are: every local process writes `<local root>/logs/<process name>.log`
(`procs.ProcessGroup`). The pods the controller runs record their current log files in the
`meshserve-local-pods` ConfigMap (`logs`: container -> path, beside `restarts`); a pod
restarted under the same id gets new files, which a follower picks up when the ConfigMap
changes. The pods `meshserve dev --pods N` and the test stacks start are named by their pod
id (`pod-0-puller.log`, `pod-0-mlserver.log`) and found by name in the log folder.

Never reads anything but those files and the admin API; a pod it cannot find is an error
that names the pods it knows.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

CONTAINERS = ("mlserver", "triton", "ovms", "runtime", "puller")
"""The process kinds of a local runtime pod (the model server first, then the puller)."""


class PodNotFound(Exception):
    pass


def pods_in_folder(log_dir: Path) -> dict[str, dict[str, Path]]:
    """Pod id -> container -> log file, for the pods whose processes are named by pod id
    (a pod is known by its puller's log, `<pod>-puller.log`)."""
    pods: dict[str, dict[str, Path]] = {}
    try:
        names = sorted(p.name for p in log_dir.iterdir() if p.name.endswith("-puller.log"))
    except OSError:
        return pods
    for name in names:
        pod = name.removesuffix("-puller.log")
        files = {c: log_dir / f"{pod}-{c}.log" for c in CONTAINERS if (log_dir / f"{pod}-{c}.log").is_file()}
        pods[pod] = files
    return pods


def pods_in_status(status: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Path]]:
    """Pod id -> container -> log file, from the local pods ConfigMap (`resources.local_pod_status`)."""
    out: dict[str, dict[str, Path]] = {}
    for pod, st in status.items():
        logs = st.get("logs") if isinstance(st, Mapping) else None
        if isinstance(logs, Mapping):
            order = {c: i for i, c in enumerate(CONTAINERS)}
            out[pod] = {str(c): Path(str(p)) for c, p in sorted(logs.items(), key=lambda kv: order.get(kv[0], 99))}
    return out


def known_pods(
    *, status: Mapping[str, Mapping[str, Any]], registered: Sequence[str] | None, log_dir: Path
) -> dict[str, dict[str, Path]]:
    """Every pod whose logs can be shown: the controller's (ConfigMap) and, from the log folder,
    the pods the scheduler knows (`registered`; None when it could not be asked: all of them)."""
    pods = {}
    folder = pods_in_folder(log_dir)
    for pod, files in folder.items():
        if registered is None or pod in registered:
            pods[pod] = files
    pods.update(pods_in_status(status))
    return pods


def pick(pods: Mapping[str, Mapping[str, Path]], pod: str, container: str | None, *, log_dir: Path) -> dict[str, Path]:
    """The log files of `pod` (of one `container` when given); `PodNotFound` names the known ones."""
    if pod not in pods:
        known = ", ".join(sorted(pods)) or "none"
        raise PodNotFound(f"no runtime pod {pod!r} in local mode (logs in {log_dir}); known pods: {known}")
    files = dict(pods[pod])
    if container is not None:
        if container not in files:
            raise PodNotFound(f"pod {pod!r} has no container {container!r}; it has: {', '.join(files) or 'none'}")
        files = {container: files[container]}
    return files


def tail_lines(text: str, n: int | None) -> list[str]:
    lines = text.splitlines(keepends=True)
    return lines if n is None or n < 0 else lines[len(lines) - n:] if n else []


def _prefix(container: str, several: bool) -> str:
    return f"[{container}] " if several else ""


def show(files: Mapping[str, Path], *, out: TextIO, tail: int | None = None) -> dict[str, int]:
    """Print each file (its last `tail` lines), model server first; returns container -> bytes read."""
    offsets = {}
    several = len(files) > 1
    for container, path in files.items():
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        for line in tail_lines(data.decode(errors="replace"), tail):
            out.write(_prefix(container, several) + line + ("" if line.endswith("\n") else "\n"))
        offsets[container] = len(data)
    out.flush()
    return offsets


@dataclass
class _Followed:
    path: Path
    offset: int
    partial: bytes = b""


def follow(
    files: Mapping[str, Path], offsets: Mapping[str, int], *, out: TextIO, stop: threading.Event,
    refresh: Callable[[], Mapping[str, Path] | None] = lambda: None, interval: float = 0.5, refresh_every: int = 4,
) -> None:
    """Print what is appended to the files until `stop` is set. Every `refresh_every` looks,
    `refresh()` gives the pod's current files (a restarted pod's new ones) or None to keep
    them; a file that shrank was rewritten and is read from its start."""
    several = len(files) > 1
    followed = {c: _Followed(p, offsets.get(c, 0)) for c, p in files.items()}
    looks = 0
    while not stop.wait(interval):
        looks += 1
        current = refresh() if looks % max(refresh_every, 1) == 0 else None
        if current:
            for c, p in current.items():
                if c not in followed or followed[c].path != p:
                    followed[c] = _Followed(p, 0)
        for c, f in followed.items():
            try:
                size = os.path.getsize(f.path)
            except OSError:
                continue
            if size < f.offset:
                f.offset, f.partial = 0, b""
            if size == f.offset:
                continue
            with open(f.path, "rb") as fh:
                fh.seek(f.offset)
                data = fh.read(size - f.offset)
            f.offset += len(data)
            *lines, f.partial = (f.partial + data).split(b"\n")
            for line in lines:
                out.write(_prefix(c, several) + line.decode(errors="replace") + "\n")
        out.flush()
