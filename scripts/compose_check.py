#!/usr/bin/env python3
"""Run docker-compose.yml with podman-compose and drive it from the host as a user would.

    python3 scripts/compose_check.py [--keep] [--report FILE] [--build]

Runs as root with the host's python3 (standard library only) on a machine like this one:
Podman 4.3 from Debian, no Docker daemon, no image registry. Steps:

1. the images: built by scripts/images.sh when any is missing (--build: always, cached layers);
2. podman-compose (PyPI, pinned) in a venv of its own under .tools/ when not on PATH;
3. the stack from docker-compose.yml + docker-compose.local.yml (local Redis, Postgres and an S3
   in place of the public images), started in order: podman 4.3 runs no healthchecks by itself
   and podman-compose ignores `condition: service_healthy`, so each step waits for the previous
   one (Redis, Postgres and S3 healthy, the migrate job exited 0, the scheduler, router and
   controller answering, both runtime pods registered), each polled with a deadline;
4. as the compose file's header says: the example model uploaded to the stack's S3 (bucket
   modelmesh-example-models), `meshserve apply -f` the mlserver-1.x ServingRuntime and the
   example InferenceService (admin API :8080), then a KServe v2 gRPC inference (`meshserve
   infer`, router :8033) and a REST one (router :8008), each checked to answer class 8 for examples/inputs/sklearn-mnist.json;
5. figures: time from `up` to the first successful inference, `podman stats --no-stream`;
6. `podman-compose down -v` (also on failure, after the services' last log lines), unless --keep.

The host needs no meshserve install: the meshserve CLI and boto3 come from .venv when it is
there, else from the controller image (`podman run --network host`, the repository mounted at its
own path, so the same arguments work). Podman reads docker/podman/containers.conf through
CONTAINERS_CONF; no system file is edited.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "meshserve"  # docker-compose.yml's `name:`
TAG = os.environ.get("MESHSERVE_TAG", "0.1.0")
PODMAN_COMPOSE_VERSION = "1.6.0"
RUNTIME = ROOT / "examples/isvc/mlserver-1.x-servingruntime.yaml"
ISVC = ROOT / "examples/isvc/example-mlserver-sklearn-mnist-isvc.yaml"
MODEL_NAME = "example-sklearn-mnist-svm"
MODEL_FILE = ROOT / "examples/models/sklearn/mnist-svm.joblib"
MODEL_KEY = "sklearn/mnist-svm.joblib"
INPUT = ROOT / "examples/inputs/sklearn-mnist.json"
EXPECTED = 8
BUCKET = "modelmesh-example-models"
S3_KEYS = ROOT / "docker/storage-config/localMinIO"
ADMIN = "http://127.0.0.1:8080"
ROUTER_GRPC = "127.0.0.1:8033"
ROUTER_REST = "http://127.0.0.1:8008"
IMAGES = [
    f"localhost/meshserve/{t}:{TAG}"
    for t in ("router", "scheduler", "controller", "puller", "mlserver")
] + [
    "localhost/local/redis:bookworm",
    "localhost/local/postgres:bookworm",
    "localhost/local/s3:bookworm",
]
ENV = dict(
    os.environ,
    CONTAINERS_CONF=os.environ.get("CONTAINERS_CONF", str(ROOT / "docker/podman/containers.conf")),
)
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[compose-check {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


class CheckFailed(Exception):
    pass


def run(
    cmd: list[str], *, check: bool = True, capture: bool = False, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, text=True, capture_output=capture, timeout=timeout)
    if check and res.returncode != 0:
        detail = f"\n{res.stdout}\n{res.stderr}" if capture else ""
        raise CheckFailed(f"{' '.join(cmd)} exited {res.returncode}{detail}")
    return res


def wait_for(
    what: str, probe: Callable[[], bool], deadline_s: float, every_s: float = 1.0
) -> float:
    """Poll `probe` until it is true; the seconds it took. CheckFailed at the deadline."""
    start = time.monotonic()
    while True:
        try:
            if probe():
                took = time.monotonic() - start
                log(f"{what}: ok after {took:.1f} s")
                return took
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        if time.monotonic() - start > deadline_s:
            raise CheckFailed(f"{what}: not ready after {deadline_s:.0f} s")
        time.sleep(every_s)  # polling interval of a condition with a deadline, not synchronisation


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(200 <= resp.status < 300)
    except urllib.error.URLError:
        return False


def podman_compose() -> list[str]:
    exe = os.environ.get("PODMAN_COMPOSE") or shutil.which("podman-compose")
    if not exe:
        venv = ROOT / ".tools/podman-compose"
        exe = str(venv / "bin/podman-compose")
        if not Path(exe).exists():
            log(f"installing podman-compose {PODMAN_COMPOSE_VERSION} (PyPI) into {venv}")
            run([sys.executable, "-m", "venv", str(venv)])
            run(
                [
                    str(venv / "bin/pip"),
                    "install",
                    "--quiet",
                    f"podman-compose=={PODMAN_COMPOSE_VERSION}",
                ]
            )
    return [exe, "-p", PROJECT, "-f", "docker-compose.yml", "-f", "docker-compose.local.yml"]


def container(service: str) -> str:
    out = run(
        [
            "podman",
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={PROJECT}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{.Names}}",
        ],
        capture=True,
    ).stdout.split()
    if not out:
        raise CheckFailed(f"no container for service {service}")
    return out[0]


def running(service: str) -> bool:
    name = container(service)
    state = run(["podman", "inspect", "-f", "{{.State.Status}}", name], capture=True).stdout.strip()
    if state in ("exited", "stopped", "dead"):
        raise CheckFailed(f"service {service} ({name}) is {state}")
    return state == "running"


def healthy(service: str) -> bool:
    """podman 4.3 runs no healthchecks unless systemd timers do: run the service's own check."""
    if not running(service):
        return False
    return (
        run(
            ["podman", "healthcheck", "run", container(service)], check=False, capture=True
        ).returncode
        == 0
    )


def exited_ok(service: str) -> bool:
    """A one-shot service (migrate) finished: True on exit 0, CheckFailed on another code."""
    name = container(service)
    state, code = run(
        ["podman", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name], capture=True
    ).stdout.split()
    if state != "exited":
        return False
    if code != "0":
        raise CheckFailed(f"service {service} ({name}) exited {code}")
    return True


def tool(name: str, *args: str) -> list[str]:
    """A command as the user runs it: from .venv's bin, else from the controller image."""
    if (ROOT / ".venv/bin/meshserve").exists():
        return [str(ROOT / ".venv/bin" / name), *args]
    return [
        "podman",
        "run",
        "--rm",
        "--network",
        "host",
        "-v",
        f"{ROOT}:{ROOT}:ro",
        "-w",
        str(ROOT),
        f"localhost/meshserve/controller:{TAG}",
        name,
        *args,
    ]


def upload_model() -> None:
    if not MODEL_FILE.exists():
        raise CheckFailed(f"{MODEL_FILE.relative_to(ROOT)} missing: make it with `make examples`")
    keys = json.loads(S3_KEYS.read_text())
    code = (
        "import boto3,sys; s3=boto3.client('s3', endpoint_url='http://127.0.0.1:9000', region_name=sys.argv[3],"
        " aws_access_key_id=sys.argv[4], aws_secret_access_key=sys.argv[5]);"
        " b=sys.argv[1]; names=[x['Name'] for x in s3.list_buckets()['Buckets']];"
        " r=sys.argv[3]; where={} if r == 'us-east-1' else {'CreateBucketConfiguration': {'LocationConstraint': r}};"
        " b in names or s3.create_bucket(Bucket=b, **where);"
        " s3.upload_file(sys.argv[2], b, sys.argv[6]); print(s3.head_object(Bucket=b, Key=sys.argv[6])['ContentLength'])"
    )
    out = run(
        tool(
            "python",
            "-c",
            code,
            BUCKET,
            str(MODEL_FILE),
            keys.get("region", "us-east-1"),
            keys["access_key_id"],
            keys["secret_access_key"],
            MODEL_KEY,
        ),
        capture=True,
    ).stdout.strip()
    log(f"uploaded s3://{BUCKET}/{MODEL_KEY} ({out} bytes)")


def grpc_answer(stdout: str) -> list[int]:
    """The class ids in `meshserve infer`'s JSON (typed int64 contents or raw little-endian bytes)."""
    reply = json.loads(stdout)
    out = reply["outputs"][0]
    contents = out.get("contents", {})
    if "int64Contents" in contents:
        return [int(v) for v in contents["int64Contents"]]
    raw = base64.b64decode(reply["rawOutputContents"][0])
    return list(struct.unpack(f"<{len(raw) // 8}q", raw))


def infer_grpc() -> list[int]:
    res = run(
        tool(
            "meshserve",
            "infer",
            MODEL_NAME,
            "-f",
            str(INPUT),
            "--router",
            ROUTER_GRPC,
            "--timeout",
            "60",
        ),
        check=False,
        capture=True,
        timeout=120,
    )
    if res.returncode != 0:
        log(f"gRPC infer not yet: {res.stderr.strip()[-300:]}")
        raise ValueError(res.stderr)
    return grpc_answer(res.stdout)


def infer_rest() -> list[int]:
    reply = http_json(
        "POST",
        f"{ROUTER_REST}/v2/models/{MODEL_NAME}/infer",
        json.loads(INPUT.read_text()),
        timeout=60,
    )
    return [int(v) for v in reply["outputs"][0]["data"]]


def dump_logs(compose: list[str]) -> None:
    for service in (
        "redis",
        "postgres",
        "minio",
        "migrate",
        "scheduler",
        "router",
        "controller",
        "mlserver-0",
        "puller-0",
        "mlserver-1",
        "puller-1",
    ):
        try:
            name = container(service)
        except CheckFailed:
            continue
        res = run(["podman", "logs", "--tail", "25", name], check=False, capture=True)
        print(f"----- {service} ({name}) -----\n{res.stdout}{res.stderr}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    parser.add_argument(
        "--build", action="store_true", help="run scripts/images.sh first even if the images exist"
    )
    parser.add_argument("--report", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("compose_check.py: run as root (rootful podman)", file=sys.stderr)
        return 2
    figures: dict[str, Any] = {}
    missing = [
        i for i in IMAGES if run(["podman", "image", "exists", i], check=False).returncode != 0
    ]
    if missing or args.build:
        log(f"building images ({', '.join(missing) or 'all'}): scripts/images.sh")
        run(["bash", "scripts/images.sh", "all"])
    compose = podman_compose()
    run([*compose, "down", "-v"], check=False, capture=True)  # leftovers of an earlier run
    failed = True
    try:
        up = time.monotonic()

        def start(*services: str) -> None:
            run([*compose, "up", "-d", "--no-build", "--no-deps", *services], capture=True)

        start("redis", "postgres", "minio")
        for service in ("redis", "postgres", "minio"):
            wait_for(f"{service} healthy", lambda s=service: healthy(s), 120)
        start("migrate")
        wait_for("migrate exited 0", lambda: exited_ok("migrate"), 180)
        start("scheduler")
        wait_for(
            "scheduler /readyz", lambda: running("scheduler") and http_ok(f"{ADMIN}/readyz"), 180
        )
        start("router", "controller")
        wait_for(
            "router /readyz", lambda: running("router") and http_ok(f"{ROUTER_REST}/readyz"), 180
        )
        wait_for(
            "controller /healthz",
            lambda: running("controller") and http_ok("http://127.0.0.1:8081/healthz"),
            180,
        )
        start("mlserver-0")
        start("puller-0")
        start("mlserver-1")
        start("puller-1")
        wait_for(
            "two runtime pods registered",
            lambda: len(http_json("GET", f"{ADMIN}/v1/pods")["items"]) == 2,
            300,
        )
        figures["up_to_pods_s"] = round(time.monotonic() - up, 1)

        upload_model()
        run(tool("meshserve", "apply", "-f", str(RUNTIME), "-f", str(ISVC), "--admin", ADMIN))
        log(f"applied {RUNTIME.relative_to(ROOT)} and {ISVC.relative_to(ROOT)}")
        wait_for(
            f"gRPC inference answers {EXPECTED}", lambda: infer_grpc() == [EXPECTED], 300, every_s=2
        )
        figures["up_to_first_inference_s"] = round(time.monotonic() - up, 1)
        answer = infer_grpc()
        if answer != [EXPECTED]:
            raise CheckFailed(f"gRPC inference answered {answer}, expected [{EXPECTED}]")
        rest = infer_rest()
        if rest != [EXPECTED]:
            raise CheckFailed(f"REST inference answered {rest}, expected [{EXPECTED}]")
        log(f"REST inference answers {rest}")
        models = http_json("GET", f"{ADMIN}/v1/models?limit=1000")["items"]
        log("models: " + ", ".join(f"{m.get('id')}" for m in models))

        def measured() -> bool:
            sizes = http_json("GET", f"{ADMIN}/v1/models?limit=1000")["items"][0]["sizes"]
            figures["model_sizes"] = sizes
            return sizes.get("measured") is not None

        # the puller shares MLServer's process namespace: the copy's size is measured, not
        # predicted from the file (disk x 1.25)
        wait_for("the copy's size measured from MLServer's memory", measured, 60)
        log(f"model sizes: {figures['model_sizes']}")

        stats = run(["podman", "stats", "--no-stream", "--format", "json"], capture=True).stdout
        figures["memory"] = {
            s.get("name", s.get("Name")): s.get("mem_usage", s.get("MemUsage"))
            for s in json.loads(stats or "[]")
        }
        for name, mem in sorted(figures["memory"].items()):
            log(f"  {name}: {mem}")
        failed = False
    except CheckFailed as err:
        log(f"FAILED: {err}")
        dump_logs(compose)
    finally:
        if args.keep:
            log(
                f"stack left running (--keep); stop it with: CONTAINERS_CONF={ENV['CONTAINERS_CONF']} {' '.join(compose)} down -v"
            )
        else:
            run([*compose, "down", "-v"], check=False, capture=True)
            log("stack down")
    figures["ok"] = not failed
    figures["total_s"] = round(time.monotonic() - T0, 1)
    if args.report:
        args.report.write_text(json.dumps(figures, indent=2) + "\n")
    log(json.dumps(figures))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
