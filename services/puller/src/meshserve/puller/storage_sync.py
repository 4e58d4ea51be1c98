"""The download loop every object store shares (S3, GCS, Azure): `sync_objects`.

A provider lists what is at the model path (`RemoteObject`s) and passes a function that
writes one object's bytes to a file. The loop maps every key to a local path first (so a
key that would escape refuses the whole fetch before any byte is written), skips files
whose version tag is unchanged in the manifest, and downloads the rest to `.part` files,
renamed into place when complete, up to `workers` at once. Blocking; runs in a worker
thread of the puller, its downloads in a pool of its own.

With a `ModelCache` (the node's shared cache, `model_cache`), each `.part` is instead a
hard link to the object's cache entry, downloaded only when the node has no good copy;
`source` (the store and container) and the object's key, version and checksum name the
entry. Without one, nothing differs from the loop above.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from meshserve.common.storage import safe_join
from meshserve.puller.model_cache import ModelCache

MANIFEST = ".meshserve-files.json"


@dataclass(frozen=True)
class RemoteObject:
    """One object found at a model path in an object store."""

    key: str
    """The object's full key (name) in its bucket or container."""
    size: int
    version: str
    """A tag that changes whenever the bytes do (ETag, MD5, generation); kept in the manifest."""
    checksum: str = ""
    """`md5:<hex>` / `crc32c:<hex>` of the bytes when the store gives one, else "": part of
    the cache key. Checking a download against it is the download function's job."""


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
    cache: ModelCache | None = None,
    source: str = "",
) -> int:
    """Bring `dest` up to date with `objects`; returns their total size. Blocking.

    Every local path is checked before the first download, so a bad key writes nothing.
    A file already on disk with the same size and manifest version is left untouched.
    `download(obj, tmp)` writes the object's bytes to `tmp` and raises our own errors
    (FailedPrecondition / Unavailable); it is called from up to `workers` threads at once
    (1: in this thread), so it must be thread-safe. On the first failure no new download
    starts, the running ones finish, and the first error is raised; the manifest records
    every file that was completed, and no `.part` file is left.

    With `cache`, each file becomes a hard link to its entry in the node's cache (or a copy
    across mounts), and `download` runs only for entries the node lacks; `source` names
    the store and container (endpoint + bucket), so equal keys of two stores never meet.
    """
    if cache is not None and not source:
        raise ValueError("sync_objects with a cache needs the store's identity (source)")
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
            if cache is None:
                download(obj, tmp)
            else:
                tmp.unlink(missing_ok=True)  # a crashed run's leftover: the link needs a free name
                cache.materialize(
                    source=source, key=obj.key, version=obj.version, checksum=obj.checksum, size=obj.size, dest=tmp,
                    download=lambda part: download(obj, part),
                )
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(target)
        if cache is not None:
            tmp.unlink(missing_ok=True)  # rename(2) leaves both names when they link one inode already
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
