"""Run one pod of the example SPI runtime beside a running local stack (`meshserve dev`):
the runtime process (runtime.py) plus a puller with the SPI adapter, registered with the
stack's scheduler as a pod of `linear-json-runtime`. Uploads the example model to the
stack's S3 first. Ctrl-C stops both.

    .venv/bin/python examples/custom/spi-runtime/run_pod.py            # scheduler on 127.0.0.1:8034
    .venv/bin/python examples/custom/spi-runtime/run_pod.py --no-storage-helper

Local mode does not start pods for runtimes other than MLServer and Triton, so this stands in
for the Deployment the controller would create in a cluster.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

import boto3
import yaml

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT / ".dev", help="the local stack's folder (its storage-config/)")
    p.add_argument("--scheduler", default="127.0.0.1:8034", help="the scheduler's gRPC address")
    p.add_argument("--admin", default="http://127.0.0.1:8080", help="the scheduler's admin API")
    p.add_argument("--pod-id", default="linear-json-0")
    p.add_argument("--no-storage-helper", action="store_true", help="as storageHelper.disabled: the runtime fetches")
    args = p.parse_args(argv)

    runtime = yaml.safe_load((HERE / "servingruntime.yaml").read_text())
    formats = ",".join(f"{f['name']}:{f['version']}" for f in runtime["spec"]["supportedModelFormats"] if f.get("autoSelect"))
    # the container's env (capacity, loading concurrency, ...); the endpoints are chosen here
    container = runtime["spec"]["containers"][0]
    runtime_env = {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}
    stack = Stack(StackConfig(root=args.root))
    stack.scheduler_grpc, stack.admin_url = args.scheduler, args.admin
    upload_example(stack.storage_config_dir / "localMinIO")

    env = {"MESHSERVE_PULLER_STORAGE_HELPER_DISABLED": "true"} if args.no_storage_helper else {}
    command = [
        sys.executable, str(HERE / "runtime.py"), "--grpc-endpoint", "{grpc_endpoint}",
        "--data-endpoint", "{data_endpoint}", "--host", "127.0.0.1", "--storage-config-dir", "{storage_config_dir}",
    ]
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        pod = stack.start_spi_pod(
            command, runtime=runtime["metadata"]["name"], formats=formats, pod_id=args.pod_id, env=env,
            runtime_env=runtime_env,
        )
        print(f"pod {pod.pod_id} registered: runtime v2 on {pod.mlserver_grpc}, puller on {pod.puller_address}; "
              f"logs in {stack.group.log_dir}. Ctrl-C stops it.", flush=True)
        while not stop.wait(1.0):
            dead = [proc.name for proc in stack.group.procs if not proc.alive]
            if dead:
                print(f"exited: {', '.join(dead)}; see {stack.group.log_dir}", file=sys.stderr)
                return 1
        return 0
    finally:
        stack.stop()


def upload_example(secret: Path) -> None:
    """examples/custom/spi-runtime/model/model.json to the path inferenceservice.yaml names."""
    entry = json.loads(secret.read_text())
    isvc = yaml.safe_load((HERE / "inferenceservice.yaml").read_text())
    key = isvc["spec"]["predictor"]["model"]["storage"]["path"]
    s3 = boto3.client(
        "s3", endpoint_url=entry["endpoint_url"], aws_access_key_id=entry["access_key_id"],
        aws_secret_access_key=entry["secret_access_key"], region_name=entry.get("region", "us-east-1"),
    )
    s3.upload_file(str(HERE / "model" / "model.json"), entry.get("bucket", EXAMPLE_BUCKET), key)
    print(f"uploaded model/model.json to s3://{entry.get('bucket', EXAMPLE_BUCKET)}/{key}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
