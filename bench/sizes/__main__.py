"""How accurate are measured model sizes? (`make bench-sizes`; not a test)

Two parts on one local stack, each on pods of its own:

1. Random forests of increasing size on one MLServer pod (bench/sizes/forests.py): the
   measured size against the forest's memory in a plain Python process and the pod's growth.
2. Every format on its runtime(s) (bench/sizes/formats.py): several copies per format on
   one pod per runtime (MLServer, Triton, the stand-in OVMS), against each copy's size in
   a fresh model server of the same kind started without meshserve, the disk x 1.25 guess
   and the pod's total growth; Triton's stubs split into shared and private pages; the
   first MLServer copy of each format with the runtimes imported at start-up vs at first load.

    python -m bench.sizes [--quick] [--copies N] [--kinds mlserver,triton,ovms] [--formats onnx,...]
                          [--no-forests] [--no-isolated] [--no-triton-prestart] [--keep]
    python -m bench.sizes --in-pod [--quick] [--copies N] [--formats sklearn,...] [--no-forests] [--keep]

`--in-pod` (root, Podman, meshserve's images): the MLServer formats measured inside a runtime
pod run by Podman from the controller's Deployment, against the local pod (bench/sizes/pod.py).

`--quick`: fewer forests, 2 copies per format, 1 warm + 1 measured copy in the fresh
servers (for developing; the figures in the README come from the full run on a quiet host).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.sizes import forests, formats
from bench.sizes.catalog import EXAMPLES, RUNTIMES
from meshserve.cli.devstack import Stack, StackConfig


def labels_of(text: str) -> set[str] | None:
    return {f.strip() for f in text.split(",") if f.strip()} or None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sizes", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer models and repetitions (noisy; for development)")
    parser.add_argument("--copies", type=int, default=None, help="copies per format on each pod (default 4, quick 2)")
    parser.add_argument("--kinds", default=",".join(RUNTIMES), help="pod kinds for the per-format part")
    parser.add_argument("--formats", default="", help="only these format labels (e.g. onnx,xgboost/fil)")
    parser.add_argument("--no-forests", action="store_true", help="skip the random-forest table")
    parser.add_argument("--no-isolated", action="store_true", help="skip the fresh model servers (isolated sizes)")
    parser.add_argument(
        "--no-triton-prestart", action="store_true",
        help="start the Triton pod without its warm-up model (the first copy of a format is charged its framework)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder (logs) after the run")
    parser.add_argument(
        "--in-pod", action="store_true",
        help="measure inside a Podman runtime pod (the controller's Deployment) against the local pod (root, Podman)",
    )
    args = parser.parse_args()
    if args.in_pod:
        from bench.sizes import pod

        pod.main(copies=args.copies or (1 if args.quick else 3), labels=labels_of(args.formats), keep=args.keep,
                 forests=() if args.no_forests else (40,) if args.quick else pod.FORESTS)
        return
    copies = args.copies or (2 if args.quick else 4)
    kinds = {k.strip() for k in args.kinds.split(",") if k.strip()}
    labels = labels_of(args.formats)

    root = Path(tempfile.mkdtemp(prefix="bench-sizes-"))
    stack = Stack(StackConfig(root=root, pods=0, pod_capacity_bytes=16 << 30))
    started = time.monotonic()
    forest_result = None
    try:
        stack.start()
        stack.upload_examples(EXAMPLES)
        if not args.no_forests:
            print("forests ...", flush=True)
            forest_result = forests.run(stack, quick=args.quick)
        pods: list[formats.PodResult] = []
        imports = None
        if kinds:
            print("formats on the pods ...", flush=True)
            triton_env = None if args.no_triton_prestart else {
                # the warm-up model imports the frameworks of every Triton format measured
                "MESHSERVE_PULLER_TRITON_PRESTART_FORMATS": ",".join(formats.triton_formats(labels)),
            }
            handles = formats.start_pods(stack, kinds, imports=labels is None, triton_env=triton_env)
            pods = formats.run_pods(stack, handles, copies=copies, labels=labels)
            default = next((p for p in pods if p.kind == "mlserver"), None)
            imports = formats.run_imports(stack, handles, default)
    finally:
        stack.stop()
    try:
        if pods and not args.no_isolated:
            print("isolated sizes in fresh model servers ...", flush=True)
            warm = 1 if args.quick else None
            formats.run_isolated(pods, root=root / "direct", warm=warm, repeats=1 if args.quick else 3)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n(run took {time.monotonic() - started:.0f}s{f'; stack under {root}' if args.keep else ''})\n")
    if forest_result is not None:
        forests.report(forest_result)
        print()
    if pods:
        formats.report(formats.Result(pods, imports), copies=copies)


if __name__ == "__main__":
    main()
