"""The `meshserve` command: `dev` (local stack), `infer`, `apply`/`delete` (local resource store), `get`, `describe`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

EXAMPLE_MODEL = "example-sklearn-isvc"


def _repo_root() -> Path:
    here = Path.cwd()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").exists() and (candidate / "examples").is_dir():
            return candidate
    return here


DEV_RESOURCES = (
    "examples/dev/model-serving-config.yaml",
    "examples/isvc/mlserver-1.x-servingruntime.yaml",
    "examples/isvc/triton-2.x-servingruntime.yaml",
    "examples/isvc/ovms-1.x-servingruntime.yaml",
    "examples/isvc/quickstart-sklearn-isvc.yaml",
)


def cmd_dev(args: argparse.Namespace) -> int:
    """Start the stack, then deploy the example the way a user would: `meshserve apply` of
    upstream-style YAML; the controller (local mode) starts the runtime pods."""
    from meshserve.cli import supervise
    from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig
    from meshserve.cli.resources import AdminClient, apply, load_documents

    root = _repo_root()
    token = os.environ.get("MESHSERVE_SCHEDULER_ADMIN_TOKEN") or None
    stack = Stack(
        StackConfig.from_env(
            root / ".dev", pods=args.pods, pod_capacity_bytes=args.capacity, preferred_ports=True, admin_token=token
        )
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("starting meshserve (Redis, Postgres, S3, scheduler, router, controller)...", flush=True)
    try:
        stack.start(controller=True)
        keys = stack.upload_examples(root / "examples" / "models")
        client = AdminClient(stack.admin_url, token=token)
        try:
            docs = load_documents([str(root / p) for p in DEV_RESOURCES])
            if apply(client, docs, namespace="default", out=sys.stdout, err=sys.stderr) != 0:
                return 1
        finally:
            client.close()
        print("waiting for the runtime pods the controller starts...", flush=True)
        stack.group.wait_until(
            None,
            lambda: len(stack.admin("GET", "/v1/pods").json()["items"]) >= 2
            and stack.admin("GET", f"/v1/vmodels/{EXAMPLE_MODEL}").status_code == 200,
            timeout=180,
            what="waiting for runtime pods and the example's registration",
        )
        pods = [p["id"] for p in stack.admin("GET", "/v1/pods").json()["items"]]
        bin_dir = Path(sys.executable).parent
        print(
            f"""
meshserve is up.
  router (KServe v2 gRPC)   {stack.router_grpc}
  router (KServe v2 REST)   {stack.router_rest}
  scheduler admin API       {stack.admin_url}  (OpenAPI: {stack.admin_url}/docs)
  scheduler gRPC            {stack.scheduler_grpc}
  Redis                     {stack.redis_url}
  Postgres                  {stack.database_url}
  S3 (bucket {EXAMPLE_BUCKET}) {stack.s3_endpoint}  ({len(keys)} example files uploaded)
  runtime pods              {", ".join(pods)}  (started by the controller for mlserver-1.x)
  logs                      {stack.group.log_dir}

Infer the example InferenceService (the first request loads it):
  {bin_dir}/meshserve infer {EXAMPLE_MODEL} -f examples/inputs/sklearn-mnist.json --router {stack.router_grpc}

Inspect it:
  {bin_dir}/meshserve get isvc --admin {stack.admin_url}
  {bin_dir}/meshserve get models --admin {stack.admin_url}

A process that dies is restarted (same ports, same data); Ctrl-C stops everything.""",
            flush=True,
        )
        supervisor = supervise.Supervisor(
            supervise.stack_units(stack, after_s3_restart=lambda: stack.upload_examples(root / "examples" / "models")),
            notify=supervise.printer(sys.stderr),
        )
        try:
            supervisor.run(stop)   # restarts whatever dies, until Ctrl-C
        except supervise.CrashLoop as err:
            print(f"error: {err}\n(logs: {stack.group.log_dir})", file=sys.stderr, flush=True)
            return 1
        print("\nstopping...", flush=True)
        return 0
    finally:
        stack.stop()


def cmd_infer(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
    from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2g

    body = json.loads(Path(args.file).read_text() if args.file != "-" else sys.stdin.read())
    request = v2.ModelInferRequest(model_name=args.model)
    for tensor in body.get("inputs", []):
        inp = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        field = {
            "FP32": "fp32_contents",
            "FP64": "fp64_contents",
            "INT64": "int64_contents",
            "INT32": "int_contents",
            "BOOL": "bool_contents",
            "BYTES": "bytes_contents",
        }.get(tensor["datatype"], "fp32_contents")
        data = _flatten(tensor["data"])
        getattr(inp.contents, field).extend(d.encode() if field == "bytes_contents" else d for d in data)
    with grpc.insecure_channel(args.router) as channel:
        try:
            reply = v2g.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=args.timeout)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    _unpack_raw_outputs(reply)
    print(json_format.MessageToJson(reply, indent=2))
    return 0


RAW_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "INT16": "<i2", "INT8": "i1",
              "UINT8": "u1", "UINT32": "<u4", "UINT64": "<u8", "BOOL": "?"}
RAW_FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "INT32": "int_contents",
              "INT16": "int_contents", "INT8": "int_contents", "UINT8": "uint_contents", "UINT32": "uint_contents",
              "UINT64": "uint64_contents", "BOOL": "bool_contents"}


def _unpack_raw_outputs(reply: Any) -> None:
    """Triton answers in `raw_output_contents` (little-endian bytes); show them as numbers, in
    each output's typed contents, as MLServer's answers are."""
    import numpy as np

    raws = list(reply.raw_output_contents)
    if not raws or len(raws) != len(reply.outputs):
        return
    if any(output.datatype not in RAW_DTYPES for output in reply.outputs):
        return
    for output, raw in zip(reply.outputs, raws, strict=True):
        values = np.frombuffer(raw, dtype=RAW_DTYPES[output.datatype]).tolist()
        getattr(output.contents, RAW_FIELDS[output.datatype]).extend(values)
    del reply.raw_output_contents[:]


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


def _admin(args: argparse.Namespace, method: str, path: str) -> Any:
    import httpx

    headers = {}
    token = os.environ.get("MESHSERVE_ADMIN_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = httpx.request(method, f"{args.admin.rstrip('/')}{path}", headers=headers, timeout=30)
    if response.status_code >= 400:
        raise SystemExit(f"error {response.status_code}: {response.text}")
    return response.json()


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(lines)


def _mib(n: int | None) -> str:
    return "-" if not n else f"{n / (1 << 20):.1f}Mi"


def _resource_client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from meshserve.cli.resources import AdminClient

    return AdminClient(args.admin, token=os.environ.get("MESHSERVE_ADMIN_TOKEN") or None)


def cmd_apply(args: argparse.Namespace, *, deleting: bool = False) -> int:
    from meshserve.cli import resources

    try:
        docs = resources.load_documents(args.file)
        if not docs:
            print("error: no objects passed to " + ("delete" if deleting else "apply"), file=sys.stderr)
            return 1
        client = _resource_client(args)
        try:
            run = resources.delete if deleting else resources.apply
            return run(client, docs, namespace=args.namespace, out=sys.stdout, err=sys.stderr)
        finally:
            client.close()
    except resources.LoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def cmd_delete(args: argparse.Namespace) -> int:
    return cmd_apply(args, deleting=True)


RESOURCE_KINDS = ["isvc", "inferenceservices", "predictors", "servingruntimes", "clusterservingruntimes", "secrets", "secret"]


def cmd_get(args: argparse.Namespace) -> int:
    if args.kind in RESOURCE_KINDS:
        from meshserve.cli import resources

        client = _resource_client(args)
        try:
            return resources.get(client, args.kind, namespace=args.namespace, out=sys.stdout, err=sys.stderr,
                                 name=args.name)
        except resources.LoadError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        finally:
            client.close()
    if args.kind == "models":
        items = _admin(args, "GET", "/v1/models?limit=1000")["items"]
        rows = [
            [m["id"], m["format"], m["state"], str(len(m["copies"])), _mib(m["sizes"]["measured"] or m["sizes"]["predicted"] or m["sizes"]["declared"]), str(m["requests"])]
            for m in items
        ]
        print(_table(rows, ["MODEL", "FORMAT", "STATE", "COPIES", "SIZE", "REQUESTS"]))
    elif args.kind == "pods":
        from meshserve.cli.resources import local_pod_status, restarts_column

        items = _admin(args, "GET", "/v1/pods")["items"]
        client = _resource_client(args)
        try:
            status = local_pod_status(client, namespace=args.namespace)
        finally:
            client.close()
        rows = [
            [p["id"], p["runtime"], _mib(p["capacityBytes"]), _mib(p["allocatedBytes"]), str(len(p["models"])), str(p["loading"]),
             restarts_column(status.get(p["id"]))]
            for p in items
        ]
        print(_table(rows, ["POD", "RUNTIME", "CAPACITY", "ALLOCATED", "MODELS", "LOADING", "RESTARTS"]))
    elif args.kind == "runtimes":
        items = _admin(args, "GET", "/v1/runtimes?limit=1000")["items"]
        rows = [
            [
                r["name"],
                ",".join(r["supportedModelFormats"]) or "-",
                str(r["pods"]),
                _mib(r["podCapacityBytes"]),
                _mib(r["defaultModelSizeBytes"]),
                str(r["maxLoadingConcurrency"]),
                (r["updatedAt"] or "-")[:19],
            ]
            for r in items
        ]
        print(_table(rows, ["RUNTIME", "FORMATS", "PODS", "POD CAPACITY", "DEFAULT SIZE", "MAX LOADING", "UPDATED"]))
    elif args.kind == "vmodels":
        items = _admin(args, "GET", "/v1/vmodels?limit=1000")["items"]
        print(_table([[v["id"], v["activeModelId"], v["targetModelId"]] for v in items], ["VMODEL", "ACTIVE", "TARGET"]))
    elif args.kind == "events":
        items = _admin(args, "GET", "/v1/events?limit=50")["items"]
        print(_table([[e["time"][:19], e["kind"], e["model"], e["pod"], e["message"]] for e in items], ["TIME", "KIND", "MODEL", "POD", "MESSAGE"]))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    m = _admin(args, "GET", f"/v1/models/{args.name}")
    print(json.dumps(m, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshserve", description="meshserve: serve thousands of models on a few pods")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run the whole stack locally (Ctrl-C stops it)")
    dev.add_argument("--pods", type=int, default=0, help="extra runtime pods beside the controller's")
    dev.add_argument("--capacity", type=int, default=512 * 1024 * 1024, help="model memory per pod, bytes")
    dev.set_defaults(fn=cmd_dev)
    infer = sub.add_parser("infer", help="send a v2 JSON request to the router over gRPC")
    infer.add_argument("model")
    infer.add_argument("-f", "--file", required=True, help="v2 JSON request body ({'inputs': [...]}), or - for stdin")
    infer.add_argument("--router", default=os.environ.get("MESHSERVE_ROUTER", "127.0.0.1:8033"))
    infer.add_argument("--timeout", type=float, default=120)
    infer.set_defaults(fn=cmd_infer)
    admin_default = os.environ.get("MESHSERVE_ADMIN_URL", "http://127.0.0.1:8080")
    namespace_default = os.environ.get("MESHSERVE_NAMESPACE", "default")
    for verb, fn, help_text in (
        ("apply", cmd_apply, "create or update resources from YAML (InferenceService, Predictor, ServingRuntime, ...)"),
        ("delete", cmd_delete, "delete the resources named in YAML files"),
    ):
        p = sub.add_parser(verb, help=help_text)
        p.add_argument("-f", "--filename", dest="file", action="append", required=True,
                       help="YAML file with one or more documents, or - for stdin (repeatable)")
        p.add_argument("-n", "--namespace", default=namespace_default, help="for documents without one")
        p.add_argument("--admin", default=admin_default, help="scheduler admin API (env MESHSERVE_ADMIN_URL)")
        p.set_defaults(fn=fn)
    get = sub.add_parser(
        "get", help="list models, pods, runtimes, vmodels, events, or resources (isvc, predictors, servingruntimes)"
    )
    get.add_argument("kind", choices=["models", "pods", "runtimes", "vmodels", "events", *RESOURCE_KINDS])
    get.add_argument("name", nargs="?", help="secret: one Secret's keys and their storage types (never values)")
    get.add_argument("-n", "--namespace", default=namespace_default)
    get.add_argument("--admin", default=admin_default)
    get.set_defaults(fn=cmd_get)
    describe = sub.add_parser("describe", help="show one model in detail")
    describe.add_argument("what", choices=["model"])
    describe.add_argument("name")
    describe.add_argument("--admin", default=admin_default)
    describe.set_defaults(fn=cmd_describe)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
