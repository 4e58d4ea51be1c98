"""The `meshserve` command: `dev` (local stack), `infer`, `apply`/`delete` (local resource store), `get` (`-w`),
`describe`, `load`, `top`, `logs`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from meshserve.cli import live
from meshserve.cli.live import CommandError, admin_token, stop_on_signals

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
            root / ".dev", pods=args.pods, pod_capacity_bytes=args.capacity, preferred_ports=True, admin_token=token,
            **({"internal_tls": True} if args.internal_tls else {}),
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
  {bin_dir}/meshserve get models --admin {stack.admin_url}   (-w: watch the models change)
  {bin_dir}/meshserve top pods --admin {stack.admin_url} --metrics {stack.router_rest}/metrics   (top models too)
  {bin_dir}/meshserve logs {pods[0] if pods else "<pod>"}   (a runtime pod's model server and puller; -f follows)

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


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(lines)


def _mib(n: int | None) -> str:
    return "-" if not n else f"{n / (1 << 20):.1f}Mi"


def _resource_client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from meshserve.cli.resources import AdminClient

    return AdminClient(args.admin, token=admin_token())


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
            code = run(client, docs, namespace=args.namespace, out=sys.stdout, err=sys.stderr)
        finally:
            client.close()
    except resources.LoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if code == 0 and getattr(args, "wait", False):
        return live.wait_for_models(args, [d.name for d in docs if d.kind in ("InferenceService", "Predictor")])
    return code


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
    if args.watch and args.kind != "models":
        print("error: -w/--watch is for `get models` only", file=sys.stderr)
        return 1
    if args.kind == "models":
        from meshserve.cli import watching

        if args.watch:
            return watching.watch_models(lambda: live.models(args), out=sys.stdout, err=sys.stderr,
                                         stop=stop_on_signals(), interval=args.interval)
        items = live.admin(args, "GET", "/v1/models?limit=1000")["items"]
        print(_table([watching.model_row(m) for m in items], watching.MODEL_HEADER))
    elif args.kind == "pods":
        from meshserve.cli.resources import local_pod_status, restarts_column

        items = live.admin(args, "GET", "/v1/pods")["items"]
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
        items = live.admin(args, "GET", "/v1/runtimes?limit=1000")["items"]
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
        items = live.admin(args, "GET", "/v1/vmodels?limit=1000")["items"]
        print(_table([[v["id"], v["activeModelId"], v["targetModelId"]] for v in items], ["VMODEL", "ACTIVE", "TARGET"]))
    elif args.kind == "events":
        items = live.admin(args, "GET", "/v1/events?limit=50")["items"]
        print(_table([[e["time"][:19], e["kind"], e["model"], e["pod"], e["message"]] for e in items], ["TIME", "KIND", "MODEL", "POD", "MESSAGE"]))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    m = live.admin(args, "GET", f"/v1/models/{quote(args.name, safe='')}")
    print(json.dumps(m, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshserve", description="meshserve: serve thousands of models on a few pods")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run the whole stack locally (Ctrl-C stops it)")
    dev.add_argument("--pods", type=int, default=0, help="extra runtime pods beside the controller's")
    dev.add_argument("--capacity", type=int, default=512 * 1024 * 1024, help="model memory per pod, bytes")
    dev.add_argument(
        "--internal-tls", action="store_true",
        help="mutual TLS on every internal gRPC hop (a private CA and per-service certificates under .dev/tls)",
    )
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
        if verb == "apply":
            p.add_argument("--wait", action="store_true",
                           help="then show each InferenceService's/Predictor's progress until its model is Loaded")
            p.add_argument("--timeout", type=float, default=300, help="seconds --wait waits in all")
        p.set_defaults(fn=fn)
    get = sub.add_parser(
        "get", help="list models, pods, runtimes, vmodels, events, or resources (isvc, predictors, servingruntimes)"
    )
    get.add_argument("kind", choices=["models", "pods", "runtimes", "vmodels", "events", *RESOURCE_KINDS])
    get.add_argument("name", nargs="?", help="secret: one Secret's keys and their storage types (never values)")
    get.add_argument("-n", "--namespace", default=namespace_default)
    get.add_argument("--admin", default=admin_default)
    get.add_argument("-w", "--watch", action="store_true",
                     help="models: print the table, then a row each time a model changes (Ctrl-C ends)")
    get.add_argument("--interval", type=float, default=1.0, help="seconds between looks at the admin API (-w)")
    get.set_defaults(fn=cmd_get)
    load = sub.add_parser("load", help="load a registered model now, showing its progress until Loaded")
    load.add_argument("model")
    load.add_argument("--timeout", type=float, default=300, help="seconds to wait for Loaded")
    load.add_argument("--admin", default=admin_default)
    load.set_defaults(fn=live.cmd_load)
    top_p = sub.add_parser("top", help="live usage of pods or models (admin API + the router's metrics)")
    top_p.add_argument("what", choices=["pods", "models"])
    top_p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (and the rate window)")
    top_p.add_argument("--once", action="store_true", help="one snapshot (rates over one --interval), then exit")
    top_p.add_argument("--metrics", action="append",
                       help="router Prometheus endpoint (repeatable; env MESHSERVE_ROUTER_METRICS_URL, "
                            "default http://127.0.0.1:8008/metrics)")
    top_p.add_argument("--admin", default=admin_default)
    top_p.set_defaults(fn=live.cmd_top)
    logs = sub.add_parser("logs", help="local mode: the logs of a runtime pod (model server and puller)")
    logs.add_argument("pod")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended (Ctrl-C ends)")
    logs.add_argument("-c", "--container", choices=["mlserver", "triton", "ovms", "runtime", "puller"],
                      help="one process only")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines of each log")
    logs.add_argument("--local-root", default=os.environ.get("MESHSERVE_LOCAL_ROOT"),
                      help="the local stack's folder (logs/ inside; default .dev of the checkout; env MESHSERVE_LOCAL_ROOT)")
    logs.add_argument("-n", "--namespace", default=namespace_default)
    logs.add_argument("--admin", default=admin_default)
    logs.set_defaults(fn=lambda a: live.cmd_logs(a, default_root=_repo_root() / ".dev"))
    describe = sub.add_parser("describe", help="show one model in detail")
    describe.add_argument("what", choices=["model"])
    describe.add_argument("name")
    describe.add_argument("--admin", default=admin_default)
    describe.set_defaults(fn=cmd_describe)
    args = parser.parse_args(argv)
    from meshserve.cli.resources import LoadError
    from meshserve.cli.watching import Unreachable

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return int(args.fn(args))
    except (Unreachable, LoadError, CommandError) as err:   # one line, never a traceback
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:   # a caller in the same process (tests, scripts) gets its own Ctrl-C back
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
