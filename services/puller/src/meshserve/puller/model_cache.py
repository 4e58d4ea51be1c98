"""A model-file cache shared by the runtime pods of one node (`MESHSERVE_PULLER_CACHE_DIR`).

What it owns: one folder, `<root>/entries/<k[:2]>/<k>`, where `<k>` is `entry_key(...)`,
the SHA-256 of the object's store identity (where it lives: endpoint, bucket, key) and of
what the store says about its bytes (ETag / generation and its MD5 or CRC32C when it gives
one). Two different objects, or two versions of one, never share an entry; the same object
read by two pods always does. Beside each entry: `<k>.json` (its identity, size and the
SHA-256 of its bytes computed on download, which is what every later use is checked
against), `<k>.lock` (the entry's flock) and, while it downloads, `<k>.part`.

How it is used: `materialize` makes a file of a model folder a *hard link* to the entry,
downloading the entry first if it is missing or fails its check. No copy is made, and the
link is the reference: an entry with `st_nlink == 1` is held by no model folder, so it can
be evicted; removing a model folder (unload, purge, a pod's emptyDir deleted with the pod)
drops its references with no bookkeeping to go stale. A refs file would need cleaning up
by whoever removes the folder, and a pod that dies never does. The price: the model folder
and the cache must be on one mount (link(2) refuses to cross mounts, EXDEV); then the file
is copied instead, works, but holds no reference (the entry is evictable at once).

Invariants:
- an entry file is only ever created by rename of a complete, checked `.part`, under its
  lock, after its `.json` is written; it is never written again (mode 0444);
- only the holder of an entry's lock downloads, verifies, links or deletes it: two
  processes (or threads) wanting one object download it once, the second waits;
- eviction deletes only entries with one link whose lock it takes without waiting, the
  least recently used first, until the cache fits its bound; when referenced entries alone
  exceed it, nothing referenced is deleted and a warning says so;
- an object larger than the bound is not cached at all (downloaded straight to the model).

The decisions (`entry_key`, `plan_eviction`, `needs_rehash`) are pure functions at the top of
this module and are unit-tested alone; `ModelCache` below is the file-system shell. Blocking;
called from the puller's download threads. POSIX only (fcntl).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from meshserve.common.errors import Unavailable

log = logging.getLogger(__name__)

FORMAT = 1
"""Version of the entry layout and of `.json`; an entry of another format counts as corrupt."""
VerifyPolicy = Literal["full", "stat"]


# --- pure decisions ------------------------------------------------------------------------------


def entry_key(*, source: str, key: str, version: str, checksum: str) -> str:
    """The entry name of one object: SHA-256 over where it lives and what the store says of its bytes.

    Args:
        source: the store and container, e.g. `s3:http://127.0.0.1:9000/bucket`.
        key: the object's key in the container.
        version: the store's version tag (ETag, generation); changes with the bytes.
        checksum: `md5:<hex>` / `crc32c:<hex>` from the store, or "" when it gives none.
    """
    identity = json.dumps([FORMAT, source, key, version, checksum], separators=(",", ":"))
    return hashlib.sha256(identity.encode()).hexdigest()


@dataclass(frozen=True)
class EntryState:
    """One entry as the evictor sees it."""

    key: str
    size: int
    last_used_ns: int
    links: int
    """st_nlink: 1 = only the cache holds it; more = as many model folders do."""

    @property
    def referenced(self) -> bool:
        return self.links > 1


@dataclass(frozen=True)
class EvictionPlan:
    evict: tuple[str, ...]
    total_bytes: int
    """Bytes of all entries before eviction (plus the incoming object)."""
    after_bytes: int
    """Bytes once the planned entries are gone (plus the incoming object)."""
    referenced_bytes: int
    over_bytes: int
    """How far `after_bytes` stays above the bound (0: it fits)."""
    reason: str


def plan_eviction(entries: Sequence[EntryState], *, max_bytes: int, incoming: int = 0) -> EvictionPlan:
    """Which entries to delete so that the cache, plus `incoming` bytes about to arrive, fits `max_bytes`.

    Unreferenced entries go least recently used first (ties: by key, so the plan is
    deterministic), and only as many as needed. Referenced entries are never planned.
    """
    total = sum(e.size for e in entries) + incoming
    referenced = sum(e.size for e in entries if e.referenced)
    evict: list[str] = []
    after = total
    for entry in sorted((e for e in entries if not e.referenced), key=lambda e: (e.last_used_ns, e.key)):
        if after <= max_bytes:
            break
        evict.append(entry.key)
        after -= entry.size
    over = max(after - max_bytes, 0)
    if over:
        reason = f"{referenced} bytes are referenced by model folders; {over} bytes over the bound remain"
    elif evict:
        reason = f"{len(evict)} unreferenced entries, least recently used first, free {total - after} bytes"
    else:
        reason = "fits"
    return EvictionPlan(tuple(evict), total, after, referenced, over, reason)


@dataclass(frozen=True)
class Stamp:
    """What stat says of an entry file: if any of it changes, the bytes may have."""

    size: int
    mtime_ns: int
    inode: int


RACY_NS = 2_000_000_000
"""A stamp taken less than this after the file's mtime proves nothing: a write in the same
timestamp tick would leave mtime as it was (git's "racily clean" index entries)."""


def needs_rehash(*, recorded: Stamp | None, recorded_at_ns: int, current: Stamp, policy: VerifyPolicy) -> bool:
    """Whether a use of an entry must hash its bytes again.

    `full` hashes on every use. `stat` hashes only when the file's size, mtime or inode
    differ from the last verification (a write through a hard link moves mtime), or when
    that verification was too close to the mtime to tell (`RACY_NS`). It misses only
    corruption below the file system, and writes that reset mtime on purpose.
    """
    if policy == "full" or recorded is None or recorded != current:
        return True
    return recorded_at_ns - recorded.mtime_ns < RACY_NS


# --- the file-system shell -----------------------------------------------------------------------


@dataclass
class CacheCounters:
    """What this process's cache did (the tests and the benchmark read it)."""

    downloads: int = 0
    hits: int = 0
    corrupt: int = 0
    bypassed: int = 0
    copied: int = 0
    evicted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


class ModelCache:
    """The node's cache folder, as one puller process uses it (thread-safe)."""

    def __init__(
        self, *, root: Path, max_bytes: int, verify: VerifyPolicy = "full", clock_ns: Callable[[], int] = time.time_ns
    ) -> None:
        """`clock_ns` stamps each use (the LRU order); tests pass a counter so that order
        does not depend on the file system's timestamp granularity."""
        if verify not in ("full", "stat"):
            raise ValueError(f"cache verify policy must be 'full' or 'stat', got {verify!r}")
        self.root = root
        self.max_bytes = max_bytes
        self.verify: VerifyPolicy = verify
        self.counters = CacheCounters()
        self._clock_ns = clock_ns
        self._entries = root / "entries"
        self._entries.mkdir(parents=True, exist_ok=True)
        self._warned_copy = False

    def __repr__(self) -> str:
        return f"ModelCache(root={str(self.root)!r}, max_bytes={self.max_bytes}, verify={self.verify!r})"

    # paths of one entry
    def data_path(self, key: str) -> Path:
        return self._entries / key[:2] / key

    def lock_path(self, key: str) -> Path:
        return self._entries / key[:2] / f"{key}.lock"

    def _meta_path(self, key: str) -> Path:
        return self._entries / key[:2] / f"{key}.json"

    def _part_path(self, key: str) -> Path:
        return self._entries / key[:2] / f"{key}.part"

    def materialize(
        self,
        *,
        source: str,
        key: str,
        version: str,
        checksum: str,
        size: int,
        dest: Path,
        download: Callable[[Path], None],
    ) -> None:
        """Make `dest` a file with the object's bytes: a hard link to its entry, downloaded if needed.

        `download(part)` writes the object to `part` and checks it against the store (size,
        the store's checksum), raising our errors; it runs at most once per entry at a time
        on the node. `dest` must not exist (the caller renames it into place).
        """
        if size > self.max_bytes:
            log.info("%s is larger than the model cache (%d > %d bytes); not cached", key, size, self.max_bytes)
            self.counters.add("bypassed")
            download(dest)
            return
        k = entry_key(source=source, key=key, version=version, checksum=checksum)
        identity = {"source": source, "key": key, "version": version, "checksum": checksum, "size": size}
        published = False
        with self._entry_lock(k):
            if not self._usable(k, identity):
                self.evict(incoming=size)
                self._download(k, identity, download)
                published = True
            else:
                self.counters.add("hits")
            now = self._clock_ns()
            with contextlib.suppress(OSError):
                os.utime(self._meta_path(k), ns=(now, now))  # the last use, for the LRU
            self._link(k, dest)
        if published:
            self.evict()

    def _usable(self, k: str, identity: dict[str, object]) -> bool:
        """The entry exists and passes its check; a corrupt one is deleted (lock held)."""
        data = self.data_path(k)
        self._part_path(k).unlink(missing_ok=True)  # a crashed download's leftovers
        try:
            st = data.stat()
        except FileNotFoundError:
            return False
        problem = self._check(k, identity, Stamp(st.st_size, st.st_mtime_ns, st.st_ino))
        if problem is None:
            return True
        log.warning("model cache entry %s for %s is corrupt (%s); deleting it and downloading again", k, identity["key"], problem)
        self.counters.add("corrupt")
        data.unlink(missing_ok=True)
        self._meta_path(k).unlink(missing_ok=True)
        return False

    def _check(self, k: str, identity: dict[str, object], stamp: Stamp) -> str | None:
        try:
            meta = json.loads(self._meta_path(k).read_text())
        except (OSError, ValueError):
            return "its record is missing or unreadable"
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("identity") != identity:
            return "its record names another object"
        if stamp.size != identity["size"]:
            return f"{stamp.size} bytes on disk, {identity['size']} expected"
        raw = meta.get("stamp")
        recorded = Stamp(*raw) if isinstance(raw, list) and len(raw) == 3 else None
        recorded_at = int(meta.get("stamped_at_ns") or 0)
        if not needs_rehash(recorded=recorded, recorded_at_ns=recorded_at, current=stamp, policy=self.verify):
            return None
        if sha256_file(self.data_path(k)) != meta.get("sha256"):
            return "its SHA-256 differs from the one computed on download"
        if self.verify == "stat" and (recorded != stamp or recorded_at - stamp.mtime_ns < RACY_NS):
            meta["stamp"], meta["stamped_at_ns"] = [stamp.size, stamp.mtime_ns, stamp.inode], time.time_ns()
            _write_json(self._meta_path(k), meta)
        return None

    def _download(self, k: str, identity: dict[str, object], download: Callable[[Path], None]) -> None:
        part = self._part_path(k)
        try:
            download(part)
            got = part.stat().st_size
            if got != identity["size"]:
                raise Unavailable(f"{identity['key']}: downloaded {got} bytes, the listing said {identity['size']}")
            digest = sha256_file(part)
            part.chmod(0o444)  # a model server writing through its hard link would corrupt every pod's copy
            st = part.stat()
            meta = {
                "format": FORMAT, "identity": identity, "sha256": digest,
                "stamp": [st.st_size, st.st_mtime_ns, st.st_ino], "stamped_at_ns": time.time_ns(),
            }
            _write_json(self._meta_path(k), meta)
            part.replace(self.data_path(k))
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        self.counters.add("downloads")

    def _link(self, k: str, dest: Path) -> None:
        try:
            os.link(self.data_path(k), dest)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                raise
            if not self._warned_copy:
                self._warned_copy = True
                log.warning(
                    "cannot hard-link from the model cache %s into %s (%s): copying instead; put the cache "
                    "and the model folder on one mount to share files without copies", self.root, dest.parent,
                    os.strerror(err.errno),
                )
            shutil.copyfile(self.data_path(k), dest)
            self.counters.add("copied")

    @contextlib.contextmanager
    def _entry_lock(self, k: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold the entry's flock (yields False when `wait=False` and another holds it).

        The lock file may be deleted by an evictor between our open and our flock: then we
        hold a lock nobody else can see, so check that the path still names our inode and
        start again if not.
        """
        path = self.lock_path(k)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not _flock(fd, wait=wait):
                    held = False
                else:
                    try:
                        held = os.stat(path).st_ino == os.fstat(fd).st_ino
                    except FileNotFoundError:
                        held = False
                    if not held:
                        continue  # an evictor deleted the file we locked: lock the new one
                yield held
                return
            finally:
                os.close(fd)  # closing releases the flock

    @contextlib.contextmanager
    def _evict_lock(self) -> Iterator[None]:
        fd = os.open(self.root / ".evict.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def entries(self) -> list[EntryState]:
        """Every complete entry now on disk."""
        out = []
        for shard in self._entries.iterdir():
            if not shard.is_dir():
                continue
            for data in shard.iterdir():
                if "." in data.name:
                    continue
                try:
                    st = data.stat()
                except FileNotFoundError:
                    continue
                try:
                    used = self._meta_path(data.name).stat().st_mtime_ns
                except FileNotFoundError:
                    used = st.st_mtime_ns
                out.append(EntryState(data.name, st.st_size, used, st.st_nlink))
        return out

    def evict(self, *, incoming: int = 0) -> EvictionPlan:
        """Delete unreferenced entries, least recently used first, until the cache (+ `incoming`) fits."""
        with self._evict_lock():
            plan = plan_eviction(self.entries(), max_bytes=self.max_bytes, incoming=incoming)
            freed = 0
            for k in plan.evict:
                with self._entry_lock(k, wait=False) as held:
                    if not held:
                        continue  # in use right now: it is about to be linked or checked
                    data = self.data_path(k)
                    try:
                        if data.stat().st_nlink > 1:
                            continue  # linked since the scan
                        size = data.stat().st_size
                        data.unlink()
                    except FileNotFoundError:
                        continue
                    self._meta_path(k).unlink(missing_ok=True)
                    self.lock_path(k).unlink(missing_ok=True)
                    freed += size
                    self.counters.add("evicted")
        if plan.over_bytes:
            log.warning(
                "model cache %s is over its bound of %d bytes by %d bytes: %d bytes are referenced by model "
                "folders and cannot be evicted", self.root, self.max_bytes, plan.over_bytes, plan.referenced_bytes,
            )
        elif freed:
            log.info("model cache %s: evicted %d bytes (%s)", self.root, freed, plan.reason)
        return plan


def _flock(fd: int, *, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:  # file_digest reads into one buffer; hashlib drops the GIL while hashing
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
