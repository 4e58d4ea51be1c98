"""schemathesis against a real scheduler: its admin REST API answers what its OpenAPI says.

A scheduler process on real Redis and Postgres (the machine's when MESHSERVE_REDIS_URL /
MESHSERVE_DATABASE_URL are set, else private ones; a private database and key prefix
either way), with an admin token, so mutations are exercised with it. schemathesis reads
/openapi.json and runs every phase (examples, coverage, fuzzing, stateful) with every
check (`--checks all`): no 5xx, every status declared, every answer matching its schema,
schema-valid input accepted and schema-violating input refused, 405 with `Allow`.
Per-operation exceptions live in schemathesis.toml next to this file, each with its reason.

The run is bounded by examples per operation and a fixed seed (reproducible), not by time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshserve.cli.devstack import Stack, StackConfig

HERE = Path(__file__).resolve().parent
TOKEN = "fuzz-admin-token"
MAX_EXAMPLES = 50
SEED = 20


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, Postgres, migrations and one scheduler process (no pods: placement is not under test)."""
    config = StackConfig.from_env(
        tmp_path_factory.mktemp("fuzz-stack"),
        pods=0,
        isolate=True,
        admin_token=TOKEN,
        # no pods: a load answers "no running instances" at once (see schemathesis.toml)
        extra_env={"MESHSERVE_SCHEDULER_RUNTIME_WAIT_SECONDS": "0"},
    )
    stack = Stack(config)
    try:
        stack.start_infra()
        stack.migrate()
        stack.start_scheduler()
        yield stack
    finally:
        stack.stop()


def test_admin_api_matches_its_openapi(scheduler: Stack, tmp_path: Path) -> None:
    ndjson = tmp_path / "events.ndjson"
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [
            str(cli), "--config-file", str(HERE / "schemathesis.toml"),
            "run", f"{scheduler.admin_url}/openapi.json",
            "--checks", "all",
            "--header", f"Authorization: Bearer {TOKEN}",
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", str(SEED),
            "--workers", "1",
            "--request-timeout", "30",
            "--no-color",
            "--report", "ndjson", "--report-ndjson-path", str(ndjson),
        ],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,  # its cache goes there, not into the repo
    )
    print(run.stdout[run.stdout.rfind("SUMMARY"):])  # figures, shown with -s
    assert run.returncode == 0, f"schemathesis found problems:\n{run.stdout[-20000:]}\n{run.stderr[-2000:]}"
    assert "No issues found" in run.stdout or " passed" in run.stdout, run.stdout[-4000:]
    # the scheduler kept serving through it
    assert httpx.get(f"{scheduler.admin_url}/readyz", timeout=10).status_code == 200
    events = [json.loads(line) for line in ndjson.read_text().splitlines() if line.strip()]
    assert events, "schemathesis wrote no events: did it run?"
