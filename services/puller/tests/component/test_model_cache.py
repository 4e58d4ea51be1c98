"""The node's model cache on real files, real puller processes and a real S3 (moto server).

Each test gets a fresh cache folder and model folders beside it (one file system, so files
are hard links). Downloads are counted by the cache's own counters, which each child
process prints when it is done.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup
from meshserve.puller import storage
from meshserve.puller.model_cache import ModelCache, entry_key

BUCKET = "cache-test-bucket"
KIB = 1024


def _admin(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("s3-logs"))
    endpoint = infra.start_s3(group)
    client = _admin(endpoint)
    client.create_bucket(Bucket=BUCKET)
    for name in "abcd":
        client.put_object(Bucket=BUCKET, Key=f"{name}/model.bin", Body=name.encode() * (100 * KIB))
    client.put_object(Bucket=BUCKET, Key="folder/1/model.onnx", Body=b"w" * (50 * KIB))
    client.put_object(Bucket=BUCKET, Key="folder/config.pbtxt", Body=b"name: 'm'")
    yield endpoint
    group.stop_all()


@pytest.fixture
def cfg(s3: str) -> storage.StorageConfig:
    fields = {"type": "s3", "access_key_id": "k", "secret_access_key": "s", "endpoint_url": s3, "bucket": BUCKET}
    return storage.StorageConfig(type="s3", fields=fields, key="cacheTest")


def _clock() -> Any:
    ticks = itertools.count(1_000_000_000)
    return lambda: next(ticks) * 1_000_000  # 1 ms apart, whatever the file system's granularity


def _cache(tmp_path: Path, max_bytes: int = 10 << 20, **kw: Any) -> ModelCache:
    return ModelCache(root=tmp_path / "cache", max_bytes=max_bytes, clock_ns=_clock(), **kw)


def _fetch(cfg: storage.StorageConfig, cache: ModelCache | None, path: str, dest: Path) -> int:
    return storage.fetch(cfg, path=path, dest=dest, pvc_mounts=dest.parent, cache=cache)


def _entry(cache: ModelCache, s3: str, key: str) -> Path:
    etag = _admin(s3).head_object(Bucket=BUCKET, Key=key)["ETag"]
    k = entry_key(source=f"s3:{s3}/{BUCKET}", key=key, version=etag, checksum=f"md5:{etag.strip(chr(34))}")
    return cache.data_path(k)


def test_a_miss_downloads_once_and_every_later_load_is_a_hard_link(cfg: storage.StorageConfig, s3: str, tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    assert _fetch(cfg, cache, "a/model.bin", tmp_path / "models" / "m1") == 100 * KIB
    assert (cache.counters.downloads, cache.counters.hits) == (1, 0)
    assert _fetch(cfg, cache, "a/model.bin", tmp_path / "models" / "m2") == 100 * KIB
    assert (cache.counters.downloads, cache.counters.hits) == (1, 1)
    entry = _entry(cache, s3, "a/model.bin")
    for model in ("m1", "m2"):
        file = tmp_path / "models" / model / "model.bin"
        assert file.read_bytes() == b"a" * (100 * KIB)
        assert file.stat().st_ino == entry.stat().st_ino  # no copy
    assert entry.stat().st_nlink == 3
    assert not list((tmp_path / "models").rglob("*.part")) and not list(cache.root.rglob("*.part"))

    # the model unloaded (its folder removed), then loaded again: still no download
    shutil.rmtree(tmp_path / "models" / "m1")
    assert entry.stat().st_nlink == 2
    _fetch(cfg, cache, "a/model.bin", tmp_path / "models" / "m1")
    assert (cache.counters.downloads, cache.counters.hits) == (1, 2)


def test_a_folder_model_keeps_its_tree_through_the_cache(cfg: storage.StorageConfig, tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    dest = tmp_path / "models" / "f"
    assert _fetch(cfg, cache, "folder", dest) == 50 * KIB + 9
    assert (dest / "1" / "model.onnx").stat().st_nlink == 2 and (dest / "config.pbtxt").read_bytes() == b"name: 'm'"
    assert cache.counters.downloads == 2
    # the manifest still skips unchanged files: a second fetch into the same folder touches nothing
    assert _fetch(cfg, cache, "folder", dest) == 50 * KIB + 9
    assert (cache.counters.downloads, cache.counters.hits) == (2, 0)


def test_without_a_cache_nothing_is_linked(cfg: storage.StorageConfig, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "plain"
    assert _fetch(cfg, None, "a/model.bin", dest) == 100 * KIB
    assert (dest / "model.bin").stat().st_nlink == 1


@pytest.mark.parametrize("verify", ["full", "stat"])
@pytest.mark.parametrize("damage", ["same-size", "truncated"])
def test_a_corrupt_entry_is_deleted_and_fetched_again(
    cfg: storage.StorageConfig, s3: str, tmp_path: Path, verify: str, damage: str
) -> None:
    cache = _cache(tmp_path, verify=verify)
    _fetch(cfg, cache, "b/model.bin", tmp_path / "models" / "m1")
    shutil.rmtree(tmp_path / "models" / "m1")
    entry = _entry(cache, s3, "b/model.bin")
    entry.chmod(0o644)
    with entry.open("r+b") as f:  # what a model server writing through its hard link would do
        if damage == "same-size":
            f.write(b"X" * 10)
        else:
            f.truncate(10)
    _fetch(cfg, cache, "b/model.bin", tmp_path / "models" / "m2")
    assert (cache.counters.downloads, cache.counters.corrupt, cache.counters.hits) == (2, 1, 0)
    assert (tmp_path / "models" / "m2" / "model.bin").read_bytes() == b"b" * (100 * KIB)
    assert entry.read_bytes() == b"b" * (100 * KIB)


def test_lru_eviction_removes_only_unreferenced_entries(cfg: storage.StorageConfig, s3: str, tmp_path: Path) -> None:
    cache = _cache(tmp_path, max_bytes=300 * KIB)
    models = tmp_path / "models"
    for name in "abc":
        _fetch(cfg, cache, f"{name}/model.bin", models / name)
    # a and b unloaded (a first used, so older); c still loaded
    shutil.rmtree(models / "a")
    shutil.rmtree(models / "b")
    _fetch(cfg, cache, "d/model.bin", models / "d")  # 400 KiB > 300: one unreferenced entry must go
    assert cache.counters.evicted == 1
    assert not _entry(cache, s3, "a/model.bin").exists()
    assert _entry(cache, s3, "b/model.bin").exists() and _entry(cache, s3, "c/model.bin").exists()
    assert not _entry(cache, s3, "a/model.bin").with_suffix(".json").exists()
    assert sum(e.size for e in cache.entries()) == 300 * KIB
    # b, kept, loads again without a download
    _fetch(cfg, cache, "b/model.bin", models / "b")
    assert (cache.counters.hits, cache.counters.downloads) == (1, 4)


def test_a_cache_full_of_referenced_entries_still_loads_and_says_it_is_over(
    cfg: storage.StorageConfig, s3: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = _cache(tmp_path, max_bytes=150 * KIB)
    models = tmp_path / "models"
    _fetch(cfg, cache, "a/model.bin", models / "a")
    with caplog.at_level(logging.WARNING, logger="meshserve.puller.model_cache"):
        _fetch(cfg, cache, "b/model.bin", models / "b")
    assert (models / "b" / "model.bin").read_bytes() == b"b" * (100 * KIB)
    assert cache.counters.evicted == 0
    assert _entry(cache, s3, "a/model.bin").stat().st_nlink == 2
    over = [r.getMessage() for r in caplog.records if "over its bound" in r.getMessage()]
    assert over and f"by {50 * KIB} bytes" in over[-1] and f"{200 * KIB} bytes are referenced" in over[-1]

    # a's folder removed: its reference goes, and the next addition evicts it
    shutil.rmtree(models / "a")
    assert _entry(cache, s3, "a/model.bin").stat().st_nlink == 1
    _fetch(cfg, cache, "c/model.bin", models / "c")
    assert not _entry(cache, s3, "a/model.bin").exists()
    assert cache.counters.evicted == 1


def test_an_object_larger_than_the_cache_is_downloaded_straight_to_the_model(cfg: storage.StorageConfig, tmp_path: Path) -> None:
    cache = _cache(tmp_path, max_bytes=50 * KIB)
    dest = tmp_path / "models" / "big"
    assert _fetch(cfg, cache, "a/model.bin", dest) == 100 * KIB
    assert (dest / "model.bin").stat().st_nlink == 1 and cache.counters.bypassed == 1
    assert cache.entries() == []


CHILD = """
import json, sys
from pathlib import Path
from meshserve.puller import storage
from meshserve.puller.model_cache import ModelCache

fields, root, dest = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cache = ModelCache(root=root, max_bytes=10 << 20)
cfg = storage.StorageConfig(type="s3", fields=fields, key="cacheTest")
storage.fetch(cfg, path="c/model.bin", dest=dest, pvc_mounts=dest.parent, cache=cache)
print(json.dumps({"downloads": cache.counters.downloads, "hits": cache.counters.hits}))
"""


def _waiters(lock_file: Path) -> int:
    """Processes blocked in flock on this file (/proc/locks: `-> FLOCK ... <dev>:<inode> ...`)."""
    inode = lock_file.stat().st_ino
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and "FLOCK" in line and line.split()[-3].endswith(f":{inode}"))


def test_two_processes_racing_on_one_object_download_it_once(cfg: storage.StorageConfig, s3: str, tmp_path: Path) -> None:
    cache = _cache(tmp_path)  # only for its paths; the children use their own ModelCache on the same folder
    entry = _entry(cache, s3, "c/model.bin")
    lock_file = cache.lock_path(entry.name)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # hold the entry until both children wait on it
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(cfg.fields), str(cache.root), str(tmp_path / "models" / f"pod{i}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while _waiters(lock_file) < 2:
            assert all(c.poll() is None for c in children), [c.communicate() for c in children]
            assert time.monotonic() < deadline, "the children never reached the entry's lock"
            time.sleep(0.02)  # polling a condition; the order of events comes from the lock
    finally:
        os.close(fd)  # both start: one downloads, the other waits for it
    results = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted((r["downloads"], r["hits"]) for r in results) == [(0, 1), (1, 0)]
    for i in range(2):
        file = tmp_path / "models" / f"pod{i}" / "model.bin"
        assert file.read_bytes() == b"c" * (100 * KIB) and file.stat().st_ino == entry.stat().st_ino
    assert entry.stat().st_nlink == 3
