"""Random forests of increasing size on one MLServer pod of their own (the first table of
`make bench-sizes`).

For each load:

  measured  the size the puller reported (model server PSS after - before the load)
  disk      the file's bytes (what a size-from-files guess starts from)
  isolated  the model's own memory: PSS growth of `joblib.load` in a fresh Python process
            whose imports are already warm (a warm-up forest loaded first), so neither the
            pod's history nor one-time import costs are in it

and, for the whole run, the sum of measured sizes against the pod's total growth (what
matters for not over-committing a pod). The baseline is the upstream adapter's guess,
disk x 1.25, compared with the same references in the same run.
"""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from sklearn.ensemble import RandomForestClassifier

from bench.sizes.formats import placed_event
from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack
from meshserve.puller.memory import tree_pss_bytes

RUNTIME = "mlserver-forests"  # a runtime name of its own: only this pod takes the forests


def forest(n_trees: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, 20))
    y = (x[:, 0] + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=n_trees, random_state=seed).fit(x, y)
    buf = io.BytesIO()
    joblib.dump(model, buf)
    return buf.getvalue()


ISOLATED = """
import io, os, sys, joblib
from meshserve.puller.memory import tree_pss_bytes
warm = joblib.load(sys.argv[2])
blob = open(sys.argv[1], "rb").read()
before = tree_pss_bytes(os.getpid())
model = joblib.load(io.BytesIO(blob))
print(tree_pss_bytes(os.getpid()) - before)
"""


def isolated_size(blob: bytes, warm: Path) -> int:
    with tempfile.NamedTemporaryFile(suffix=".joblib") as f:
        f.write(blob)
        f.flush()
        out = subprocess.run([sys.executable, "-c", ISOLATED, f.name, str(warm)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@dataclass(frozen=True)
class Row:
    trees: int
    disk: int
    measured: int
    isolated: int


@dataclass(frozen=True)
class Result:
    rows: list[Row]
    total_growth: int


def run(stack: Stack, *, quick: bool) -> Result:
    sizes = [5, 40, 160] if quick else [5, 10, 20, 40, 80, 160]
    pod = stack.start_pod(pod_id="mlserver-forests", env={"MESHSERVE_PULLER_RUNTIME": RUNTIME})
    stack.wait_for_pods([pod])
    s3 = stack.s3_client()
    pid = pod.mlserver.popen.pid  # type: ignore[attr-defined]
    start = tree_pss_bytes(pid)
    warm = stack.root / "warm.joblib"
    warm.write_bytes(forest(2, seed=99))
    rows = []
    for i, n in enumerate(sizes):
        blob = forest(n, seed=i)
        key = f"bench/forest-{n}.joblib"
        s3.put_object(Bucket=EXAMPLE_BUCKET, Key=key, Body=blob)
        name = f"forest-{n}"
        response = stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{key}", runtime=RUNTIME)
        if response.status_code != 201:
            raise RuntimeError(f"registering {name}: {response.text}")
        response = stack.admin("POST", f"/v1/models/{name}:load")
        if response.status_code != 200:
            raise RuntimeError(f"loading {name}: {response.text}")
        time.sleep(0.2)  # let the allocator settle before the next reading
        placed = placed_event(stack, name)
        measured = int(placed["size"]) if placed.get("measured") else 0  # 0: the pod did not grow
        rows.append(Row(n, len(blob), measured, isolated_size(blob, warm)))
    return Result(rows, tree_pss_bytes(pid) - start)


def report(result: Result) -> None:
    print("## Random forests (1 MLServer pod, parallel_workers=0, loads serialised)")
    print(f"{'trees':>6} {'disk MiB':>9} {'measured MiB':>13} {'isolated MiB':>13} {'measured/isolated':>18} {'disk*1.25/isolated':>19}")
    errs_m, errs_d = [], []
    for r in result.rows:
        iso = max(r.isolated, 1)
        errs_m.append(abs(r.measured - iso) / iso)
        errs_d.append(abs(r.disk * 1.25 - iso) / iso)
        print(
            f"{r.trees:>6} {r.disk / 2**20:>9.2f} {r.measured / 2**20:>13.2f} {r.isolated / 2**20:>13.2f} "
            f"{r.measured / iso:>18.2f} {r.disk * 1.25 / iso:>19.2f}"
        )
    total = max(result.total_growth, 1)
    print(f"\npod's total PSS growth over all loads: {result.total_growth / 2**20:.2f} MiB")
    print(f"  sum of measured sizes      / growth: {sum(r.measured for r in result.rows) / total:.2f}")
    print(f"  sum of isolated sizes      / growth: {sum(r.isolated for r in result.rows) / total:.2f}")
    print(f"  sum of disk x 1.25 guesses / growth: {sum(r.disk for r in result.rows) * 1.25 / total:.2f}  (upstream adapter's guess)")
    print(
        f"median |error| per model against isolated: measured {statistics.median(errs_m):.0%}, "
        f"disk x 1.25 {statistics.median(errs_d):.0%}"
    )
