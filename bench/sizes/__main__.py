"""How accurate are measured model sizes? (`make bench-sizes`; not a test)

Starts a one-pod stack, loads sklearn models of increasing size (random forests made
here, deterministic) one after another, and compares, for each load:

  measured  the size the puller reported (model server RSS after - before the load)
  disk      the file's bytes (what a size-from-files guess starts from)
  isolated  the model's own memory: RSS growth of `joblib.load` in a fresh Python process
            whose imports are already warm (a warm-up forest loaded first), so neither the
            pod's history nor one-time import costs are in it

and, for the whole run, the sum of measured sizes against the pod's total RSS growth
(what matters for not over-committing a pod). The baseline is the upstream adapter's
guess, disk x 1.25, compared with the same references in the same run.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.ensemble import RandomForestClassifier

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig
from meshserve.puller.memory import tree_rss_bytes


def forest(n_trees: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, 20))
    y = (x[:, 0] + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=n_trees, random_state=seed).fit(x, y)
    buf = io.BytesIO()
    joblib.dump(model, buf)
    return buf.getvalue()


ISOLATED = """
import io, resource, sys, joblib
from meshserve.puller.memory import tree_rss_bytes
import os
warm = joblib.load(sys.argv[2])
blob = open(sys.argv[1], "rb").read()
before = tree_rss_bytes(os.getpid())
model = joblib.load(io.BytesIO(blob))
print(tree_rss_bytes(os.getpid()) - before)
"""


def isolated_size(blob: bytes, warm: Path) -> int:
    import subprocess
    import sys

    with tempfile.NamedTemporaryFile(suffix=".joblib") as f:
        f.write(blob)
        f.flush()
        out = subprocess.run([sys.executable, "-c", ISOLATED, f.name, str(warm)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def main() -> None:
    sizes = [5, 10, 20, 40, 80, 160]
    stack = Stack(StackConfig(root=Path(tempfile.mkdtemp(prefix="bench-sizes-")), pods=1, pod_capacity_bytes=8 << 30))
    stack.start()
    try:
        s3 = stack.s3_client()
        s3.create_bucket(Bucket=EXAMPLE_BUCKET)
        pod = stack.pods[0]
        pid = int((stack.root / "pods" / pod.pod_id / "mlserver.pid").read_text())
        start_rss = tree_rss_bytes(pid)
        warm = stack.root / "warm.joblib"
        warm.write_bytes(forest(2, seed=99))
        rows = []
        for i, n in enumerate(sizes):
            blob = forest(n, seed=i)
            key = f"bench/forest-{n}.joblib"
            s3.put_object(Bucket=EXAMPLE_BUCKET, Key=key, Body=blob)
            name = f"forest-{n}"
            assert stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{key}").status_code == 201
            before = tree_rss_bytes(pid)
            response = stack.admin("POST", f"/v1/models/{name}:load")
            assert response.status_code == 200, response.text
            time.sleep(0.2)  # let the allocator settle before the independent reading
            after = tree_rss_bytes(pid)
            measured = response.json()["sizes"]["measured"] or 0
            rows.append((n, len(blob), measured, after - before, isolated_size(blob, warm)))
        total_rss = tree_rss_bytes(pid) - start_rss
    finally:
        stack.stop()

    print("## Measured model sizes (1 MLServer pod, parallel_workers=0, loads serialised)")
    print(f"{'trees':>6} {'disk MiB':>9} {'measured MiB':>13} {'isolated MiB':>13} {'measured/isolated':>18} {'disk*1.25/isolated':>19}")
    errs_m, errs_d = [], []
    for n, disk, measured, _growth, isolated in rows:
        iso = max(isolated, 1)
        errs_m.append(abs(measured - iso) / iso)
        errs_d.append(abs(disk * 1.25 - iso) / iso)
        print(
            f"{n:>6} {disk / 2**20:>9.2f} {measured / 2**20:>13.2f} {isolated / 2**20:>13.2f} "
            f"{measured / iso:>18.2f} {disk * 1.25 / iso:>19.2f}"
        )
    sum_measured = sum(r[2] for r in rows)
    sum_disk = sum(r[1] for r in rows) * 1.25
    sum_isolated = sum(r[4] for r in rows)
    print(f"\npod's total RSS growth over all loads: {total_rss / 2**20:.2f} MiB")
    print(f"  sum of measured sizes      / growth: {sum_measured / total_rss:.2f}")
    print(f"  sum of isolated sizes      / growth: {sum_isolated / total_rss:.2f}")
    print(f"  sum of disk x 1.25 guesses / growth: {sum_disk / total_rss:.2f}  (upstream adapter's guess)")
    print(f"median |error| per model against isolated: measured {statistics.median(errs_m):.0%}, disk x 1.25 {statistics.median(errs_d):.0%}")


if __name__ == "__main__":
    main()
