"""What does the node's model cache save on a reload? (`make bench-storage`; not a test)

For one-file models of 1 MiB, 100 MiB and 1 GiB in S3 (a moto server on loopback), each
timed through the puller's own `storage.fetch` into a fresh model folder:

  cold, no cache   the download as it is with MESHSERVE_PULLER_CACHE_DIR empty
  cold, cache      a miss: the download into the cache, its SHA-256, the hard link
  reload, full     the model folder removed (an unload), then loaded again: the listing
                   (one HEAD), the entry's size + SHA-256 check, the hard link
  reload, stat     the same with MESHSERVE_PULLER_CACHE_VERIFY=stat, steady state (the
                   entry's stamp already trusted: no hash, only a stat)
  cat              `cat <the same bytes> > /dev/null`: reading them from local disk, the
                   limit of any reload that reads the bytes

All local reads come from the page cache (the file was just written; the host has the
memory). A model server then reads the files, which is the same for all rows and not
timed here. Medians of R repetitions; every repetition evicts the entry before a cold load.

    python -m bench.storage [--quick] [--repeats R] [--sizes-mib 1,100,1024] [--dir PATH] [--keep]

`--quick`: 1, 16 and 64 MiB, 2 repetitions (for development).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup
from meshserve.puller import storage
from meshserve.puller.model_cache import RACY_NS, ModelCache

BUCKET = "bench-storage"
MIB = 1 << 20
ROWS = ("cold, no cache", "cold, cache", "reload, full", "reload, stat", "cat")


@dataclass
class Times:
    size_mib: int
    rows: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in ROWS})

    def median(self, row: str) -> float:
        return statistics.median(self.rows[row])


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _upload(client: object, key: str, size: int, scratch: Path) -> None:
    """Random bytes (nothing compresses or dedupes them), uploaded as the AWS CLI would:
    multipart above 8 MiB, so the ETag is not an MD5 and the puller checks only the size."""
    source = scratch / "upload.bin"
    with source.open("wb") as f:
        left = size
        while left:
            chunk = min(left, 64 * MIB)
            f.write(os.urandom(chunk))
            left -= chunk
    client.upload_file(str(source), BUCKET, key, Config=TransferConfig(max_concurrency=4))  # type: ignore[attr-defined]
    source.unlink()


def run_size(cfg: storage.StorageConfig, *, size_mib: int, repeats: int, work: Path) -> Times:
    key = f"models/{size_mib}mib/model.bin"
    times = Times(size_mib)
    models = work / "models"
    caches = {policy: ModelCache(root=work / f"cache-{policy}", max_bytes=4 << 30, verify=policy) for policy in ("full", "stat")}

    def fetch(model: str, cache: ModelCache | None) -> None:
        storage.fetch(cfg, path=key, dest=models / model, pvc_mounts=work, cache=cache)

    for rep in range(repeats):
        for cache in caches.values():
            shutil.rmtree(cache.root / "entries", ignore_errors=True)
            (cache.root / "entries").mkdir()
        shutil.rmtree(models, ignore_errors=True)
        colds: list[tuple[str, str, ModelCache | None]] = [
            ("cold, no cache", "plain", None), ("cold, cache", "full", caches["full"]),
        ]
        for row, model, with_cache in colds[:: 1 if rep % 2 == 0 else -1]:  # which goes first alternates
            times.rows[row].append(_timed(lambda m=model, c=with_cache: fetch(m, c)))  # type: ignore[misc]
        fetch("stat", caches["stat"])  # untimed: the stat cache's own entry
        stat_entry = next(p for p in (caches["stat"].root / "entries").rglob("*") if p.is_file() and "." not in p.name)
        # the stat policy trusts a stamp only once taken RACY_NS after the file's last write
        wait = (stat_entry.stat().st_mtime_ns + RACY_NS - time.time_ns()) / 1e9
        if wait > 0:
            time.sleep(wait + 0.05)
        shutil.rmtree(models / "stat")
        fetch("stat", caches["stat"])  # untimed: the one hash that takes the trusted stamp
        for policy in ("full", "stat"):
            shutil.rmtree(models / policy)
            times.rows[f"reload, {policy}"].append(_timed(lambda p=policy: fetch(p, caches[p])))  # type: ignore[misc]
        cat = ["cat", str(models / "plain" / "model.bin")]
        times.rows["cat"].append(_timed(lambda c=cat: subprocess.run(c, stdout=subprocess.DEVNULL, check=True)))  # type: ignore[misc]
    hits = caches["full"].counters.hits
    assert caches["full"].counters.downloads == repeats and hits == repeats, caches["full"].counters
    return times


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms" if seconds < 10 else f"{seconds:9.2f} s "


def report(results: list[Times]) -> None:
    print()
    print("median of each row; ratios: cold (no cache) / reload, and reload / cat")
    header = f"{'model':>9} | " + " | ".join(f"{r:>15}" for r in ROWS) + " | cold/reload full | cold/reload stat | full/cat | stat/cat"
    print(header)
    print("-" * len(header))
    for t in results:
        m = {r: t.median(r) for r in ROWS}
        cells = " | ".join(f"{_fmt(m[r]):>15}" for r in ROWS)
        print(
            f"{t.size_mib:>5} MiB | {cells} | {m['cold, no cache'] / m['reload, full']:15.1f}x |"
            f" {m['cold, no cache'] / m['reload, stat']:15.1f}x | {m['reload, full'] / m['cat']:7.2f}x |"
            f" {m['reload, stat'] / m['cat']:7.2f}x"
        )
    print()
    for t in results:
        mib = t.size_mib
        print(
            f"{mib:>5} MiB throughput: cold {mib / t.median('cold, no cache'):8.0f} MiB/s, "
            f"reload full {mib / t.median('reload, full'):8.0f} MiB/s, cat {mib / t.median('cat'):8.0f} MiB/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1, 16 and 64 MiB, 2 repetitions (for development)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per size (default 3, quick 2)")
    parser.add_argument("--sizes-mib", default="", help="model sizes in MiB (default 1,100,1024; quick 1,16,64)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder on the disk to measure (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (moto's log) after the run")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes_mib or ("1,16,64" if args.quick else "1,100,1024")).split(",")]
    repeats = args.repeats or (2 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir))
    group = ProcessGroup(log_dir=work / "logs")
    try:
        endpoint = infra.start_s3(group)
        client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
        )
        client.create_bucket(Bucket=BUCKET)
        fields = {"type": "s3", "access_key_id": "k", "secret_access_key": "s", "endpoint_url": endpoint, "bucket": BUCKET}
        cfg = storage.StorageConfig(type="s3", fields=fields, key="bench")
        print(f"S3: moto at {endpoint}; work folder {work}; {repeats} repetitions")
        results = []
        for size in sizes:
            started = time.monotonic()
            _upload(client, f"models/{size}mib/model.bin", size * MIB, work)
            results.append(run_size(cfg, size_mib=size, repeats=repeats, work=work))
            print(f"  {size} MiB done in {time.monotonic() - started:.0f}s")
            client.delete_object(Bucket=BUCKET, Key=f"models/{size}mib/model.bin")  # moto keeps objects in memory
        report(results)
    finally:
        group.stop_all()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
