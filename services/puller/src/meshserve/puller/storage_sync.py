"""The download loop every object store shares (S3, GCS, Azure): `sync_objects`.

A provider lists what is at the model path (`RemoteObject`s) and passes a function that
writes one object's bytes to a file. The loop maps every key to a local path first (so a
key that would escape refuses the whole fetch before any byte is written), skips files
whose version tag is unchanged in the manifest, and downloads the rest to `.part` files,
renamed into place when complete, up to `workers` at once. Blocking; runs in a worker
thread of the puller, its downloads in a pool of its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from meshserve.common.storage import safe_join

MANIFEST = ".meshserve-files.json"


@dataclass(frozen=True)
class RemoteObject:
    """One object found at a model path in an object store."""

    key: str
    """The object's full key (name) in its bucket or container."""
    size: int
    version: str
    """A tag that changes whenever the bytes do (ETag, MD5, generation); kept in the manifest."""


def local_names(objects: Sequence[RemoteObject], *, path: str) -> list[str]:
    """The relative path under the model folder of each object (same order).

    One object whose key is exactly `path` is a single-file model and keeps its base
    name; otherwise every key lies under `path/` and keeps its tree below it. Not yet
    checked: a key such as `p/../../x` gives `../../x`, which `safe_join` then refuses.
    """
    key = path.lstrip("/")
    if len(objects) == 1 and objects[0].key == key:
        names = [PurePosixPath(key).name]
    else:
        prefix = key.rstrip("/")
        names = [str(PurePosixPath(obj.key).relative_to(prefix)) if prefix else obj.key for obj in objects]
    return [name if name not in ("", ".") else "_model" for name in names]


def sync_objects(
    objects: Sequence[RemoteObject],
    *,
    path: str,
    dest: Path,
    download: Callable[[RemoteObject, Path], None],
    workers: int = 1,
) -> int:
    """Bring `dest` up to date with `objects`; returns their total size. Blocking.

    Every local path is checked before the first download, so a bad key writes nothing.
    A file already on disk with the same size and manifest version is left untouched.
    `download(obj, tmp)` writes the object's bytes to `tmp` and raises our own errors
    (FailedPrecondition / Unavailable); it is called from up to `workers` threads at once
    (1: in this thread), so it must be thread-safe. On the first failure no new download
    starts, the running ones finish, and the first error is raised; the manifest records
    every file that was completed, and no `.part` file is left.
    """
    names = local_names(objects, path=path)
    targets = [safe_join(dest, name) for name in names]
    manifest = _read_manifest(dest)
    lock = threading.Lock()
    todo = []
    for obj, name, target in zip(objects, names, targets, strict=True):
        if not (target.is_file() and target.stat().st_size == obj.size and manifest.get(name) == obj.version):
            todo.append((obj, name, target))

    def one(obj: RemoteObject, name: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        try:
            download(obj, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(target)
        with lock:
            manifest[name] = obj.version

    try:
        if workers <= 1 or len(todo) <= 1:
            for item in todo:
                one(*item)
        else:
            _run_pool(one, todo, workers=workers)
    finally:
        with lock:
            (dest / MANIFEST).write_text(json.dumps(manifest))
    return sum(obj.size for obj in objects)


def _run_pool(
    one: Callable[[RemoteObject, str, Path], None], todo: list[tuple[RemoteObject, str, Path]], *, workers: int
) -> None:
    with ThreadPoolExecutor(max_workers=min(workers, len(todo)), thread_name_prefix="puller-download") as pool:
        futures: list[Future[None]] = [pool.submit(one, *item) for item in todo]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()  # not started yet: never starts; running ones finish (the pool waits)
    errors = [err for future in futures if not future.cancelled() and (err := future.exception()) is not None]
    if errors:
        raise errors[0]


def _read_manifest(dest: Path) -> dict[str, str]:
    try:
        data = json.loads((dest / MANIFEST).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
