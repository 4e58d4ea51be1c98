"""`make bench-soak` still runs: its entry point for a few seconds on a small stack (figures not
judged; the soak's own count of failed requests must be zero, as its target says)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_soak_bench_runs_and_reports_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.25", "--models", "6", "--sample", "3",
         "--churn-every", "3", "--grpc-rate", "20", "--rest-rate", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "errors: 0 (target 0)" in out, out
    for needle in ("gRPC requests:", "REST requests:", "scheduler", "router", "puller", "Redis keys:", "Postgres models:"):
        assert needle in out, (needle, out)
