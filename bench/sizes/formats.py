"""Measured sizes of every format on its runtime(s) (the per-format tables of
`make bench-sizes`).

On one stack with one pod per runtime (MLServer, Triton, the stand-in OVMS), several
distinct copies of each format's example model (distinct names, same files) are loaded one
after another (loads serialised: each `:load` returns before the next starts). For each
copy the size the puller reported is read from the scheduler's `placed` event.

Against what:

  isolated    the copy's own memory in a fresh model server of the same kind, started by
              the benchmark without meshserve (bench.sizes.direct) and configured as a pod's:
              after W warm copies of the same format are loaded (the framework imported, its
              shared pages mapped), the PSS growth of the server's process tree per further
              copy (the mean over R more copies: a single small copy's growth is quantised
              by the allocator). For Triton's python backend this is what one more stub
              process with this model adds (its private pages, plus the tritonserver's own
              per-model state); W = 2 there, 1 elsewhere; R = 3 (quick: W = R = 1).
  disk x 1.25 the upstream adapter's guess from the file sizes.
  pod growth  per runtime, the pod's PSS at the end minus at its start: the sum of measured
              sizes should match it (what matters for not over-committing the pod).

Also:

- Triton stubs: per copy, the stub's RSS, PSS and private pages (/proc smaps_rollup). RSS -
  private is what it shares with the other stubs (the framework's libraries, Python): the
  first copy of a format is charged those pages in full, later copies only their private
  ones, so summed PSS charges the framework once per pod, not once per copy.
- One-time imports on MLServer: a second MLServer pod whose start-up does not import the
  runtimes (MESHSERVE_WARM_IMPORTS="" for mlserver_repository) takes the first copy of
  each MLServer format, to compare with the default pod's first copy.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.sizes import direct, procmem
from bench.sizes.catalog import RUNTIMES, Case, cases
from meshserve.cli.devstack import EXAMPLE_BUCKET, PodHandle, Stack
from meshserve.cli.procs import ProcessGroup
from meshserve.puller.memory import tree_pss_bytes

MiB = 2**20
IMPORTS_AT_LOAD = "mlserver-imports-at-load"  # runtime name of the pod without start-up imports
IMPORT_ORDER = ["xgboost", "lightgbm", "sklearn"]  # the order that pod takes its first copies in


def placed_event(stack: Stack, model: str) -> dict[str, Any]:
    """The details of the scheduler's latest `placed` event for `model` (reserved, size,
    measured, seconds): the puller's answer for that load."""
    for _ in range(20):
        items = stack.admin("GET", "/v1/events", params={"model": model, "limit": 50}).json()["items"]
        placed = [e for e in items if e["kind"] == "placed"]
        if placed:
            return dict(placed[0]["details"] or {})
        time.sleep(0.1)
    raise RuntimeError(f"no placed event for {model}")


def load_count(stack: Stack, model: str) -> int:
    """How many copies of `model` the scheduler placed (its `placed` events)."""
    items = stack.admin("GET", "/v1/events", params={"model": model, "limit": 1000}).json()["items"]
    return sum(1 for e in items if e["kind"] == "placed")


def server_pid(pod: PodHandle) -> int:
    return int(pod.mlserver.popen.pid)  # type: ignore[attr-defined]


@dataclass
class Copy:
    name: str
    size: int  # what the puller reported
    measured: bool  # False: the pod did not grow and the puller fell back to its prediction
    stub: procmem.Rollup | None = None  # Triton: the copy's python-backend stub


@dataclass
class FormatResult:
    case: Case
    copies: list[Copy] = field(default_factory=list)
    isolated: list[int] = field(default_factory=list)  # mean growth per copy after the warm ones
    fresh_first: int = 0  # growth of the first (warm-up) copy in the fresh server

    @property
    def first(self) -> int:
        return self.copies[0].size

    @property
    def later(self) -> int:
        rest = [c.size for c in self.copies[1:]]
        return int(statistics.mean(rest)) if rest else self.first

    @property
    def iso(self) -> int:
        return int(statistics.median(self.isolated)) if self.isolated else 0


@dataclass
class PodResult:
    kind: str
    pod_id: str
    start: int
    end: int = 0
    formats: list[FormatResult] = field(default_factory=list)


@dataclass
class ImportsResult:
    """First copies on a pod that imports runtimes at their first load, vs the default pod."""
    pod_start: int  # PSS of that pod's MLServer before any load
    default_pod_start: int
    first: dict[str, int] = field(default_factory=dict)
    second: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    pods: list[PodResult]
    imports: ImportsResult | None


def _load(stack: Stack, name: str, case: Case, *, runtime: str, source: str | None = None) -> Copy:
    uri = f"s3://{EXAMPLE_BUCKET}/{source or case.path}"
    response = stack.register(name, storage_uri=uri, format=case.format, runtime=runtime)
    if response.status_code != 201:
        raise RuntimeError(f"registering {name}: {response.text}")
    for attempt in range(3):
        response = stack.admin("POST", f"/v1/models/{name}:load")  # :load forgets earlier failures
        if response.status_code == 200:
            break
        # not a figure, but say so: a failed load is retried, its copy is then measured alone
        print(f"  load of {name} failed (attempt {attempt + 1}): {response.text[:300]}", flush=True)
    else:
        raise RuntimeError(f"loading {name}: {response.text}")
    placed = placed_event(stack, name)
    return Copy(name, int(placed["size"]), bool(placed.get("measured")))


def triton_formats(labels: set[str] | None) -> list[str]:
    """The model formats of the Triton cases measured (for the pod's warm-up model)."""
    return sorted({c.format for c in cases({"triton"}, labels)})


def start_pods(
    stack: Stack, kinds: set[str], *, imports: bool, triton_env: dict[str, str] | None = None
) -> dict[str, PodHandle]:
    pods: dict[str, PodHandle] = {}
    if "mlserver" in kinds:
        pods["mlserver"] = stack.start_pod(pod_id="mlserver-0")
        if imports:
            # read by meshserve.puller.mlserver_repository inside the MLServer process
            # (devstack passes the environment on); empty: import nothing at start-up
            given = os.environ.get("MESHSERVE_WARM_IMPORTS")
            os.environ["MESHSERVE_WARM_IMPORTS"] = ""
            try:
                pods[IMPORTS_AT_LOAD] = stack.start_pod(
                    pod_id=IMPORTS_AT_LOAD, env={"MESHSERVE_PULLER_RUNTIME": IMPORTS_AT_LOAD}
                )
            finally:
                if given is None:
                    del os.environ["MESHSERVE_WARM_IMPORTS"]
                else:
                    os.environ["MESHSERVE_WARM_IMPORTS"] = given
    if "triton" in kinds:
        pods["triton"] = stack.start_triton_pod(pod_id="triton-0", env=triton_env)
    if "ovms" in kinds:
        pods["ovms"] = stack.start_ovms_pod(pod_id="ovms-0")
    stack.wait_for_pods(list(pods.values()), timeout=180)
    return pods


def run_pods(stack: Stack, pods: dict[str, PodHandle], *, copies: int, labels: set[str] | None) -> list[PodResult]:
    out = []
    for kind in ("mlserver", "triton", "ovms"):
        if kind not in pods:
            continue
        pod = pods[kind]
        pid = server_pid(pod)
        time.sleep(1.0)  # the server's start-up allocations settle
        result = PodResult(kind, pod.pod_id, tree_pss_bytes(pid))
        for case in cases({kind}, labels):
            fr = FormatResult(case)
            for i in range(copies):
                name = f"{case.kind}-{case.slug()}-{i}"
                fr.copies.append(_load(stack, name, case, runtime=case.runtime))
                time.sleep(0.2)
                print(f"  {pod.pod_id}: {name} {fr.copies[-1].size / MiB:.1f} MiB", flush=True)
            result.formats.append(fr)
        time.sleep(0.5)
        result.end = tree_pss_bytes(pid)
        if kind == "triton":
            stubs = procmem.triton_stubs(pid)
            for fr in result.formats:
                for c in fr.copies:
                    c.stub = procmem.rollup(stubs[c.name]) if c.name in stubs else None
        out.append(result)
    return out


def run_imports(stack: Stack, pods: dict[str, PodHandle], default: PodResult | None) -> ImportsResult | None:
    pod = pods.get(IMPORTS_AT_LOAD)
    if pod is None or default is None:
        return None
    result = ImportsResult(pod_start=tree_pss_bytes(server_pid(pod)), default_pod_start=default.start)
    # xgboost first: mlserver_xgboost imports xgboost.sklearn, which imports scikit-learn, so
    # after it the other formats find part of their imports done
    for case in sorted(cases({"mlserver"}), key=lambda c: IMPORT_ORDER.index(c.label)):
        for i, into in enumerate((result.first, result.second)):
            name = f"imports-at-load-{case.slug()}-{i}"
            into[case.label] = _load(stack, name, case, runtime=IMPORTS_AT_LOAD).size
            time.sleep(0.2)
    return result


def run_isolated(pods: list[PodResult], *, root: Path, warm: int | None, repeats: int) -> None:
    """Fill in each format's isolated sizes from fresh model servers (one per format)."""
    group = ProcessGroup(log_dir=root / "logs")
    try:
        for pod in pods:
            for fr in pod.formats:
                n_warm = warm if warm is not None else (2 if pod.kind == "triton" else 1)
                server = direct.start(pod.kind, group=group, root=root, name=f"{pod.kind}-{fr.case.slug()}")
                try:
                    time.sleep(1.0)
                    warm_end = 0
                    for i in range(n_warm + repeats):
                        name = f"iso-{fr.case.slug()}-{i}"
                        server.stage(name, fr.case)
                        before = server.memory()
                        server.load(name)
                        time.sleep(0.2)
                        after = server.memory()
                        if i == 0:
                            fr.fresh_first = after - before
                        if i == n_warm - 1:
                            warm_end = after
                    # the mean over the measured copies: one copy's growth alone is quantised
                    # by the allocator (a copy that fits in memory freed earlier reads ~0)
                    fr.isolated.append((server.memory() - warm_end) // repeats)
                    print(f"  isolated {pod.kind} {fr.case.label}: {fr.iso / MiB:.1f} MiB", flush=True)
                finally:
                    server.close()
                    group.stop(server.proc)
    finally:
        group.stop_all()


# -- report ---------------------------------------------------------------------------------
def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def report(result: Result, *, copies: int) -> None:
    print(f"## Measured sizes per format ({copies} copies each, loads serialised, one pod per runtime)")
    print("first = the first copy of the format on its pod; later = mean of the others; isolated = one more copy")
    print("in a fresh model server of the same kind after warm copies (see bench/sizes/formats.py)\n")
    head = (
        f"{'runtime':<12} {'format':<13} {'disk KiB':>8} {'first MiB':>9} {'later MiB':>9} {'isolated MiB':>12} "
        f"{'disk*1.25 MiB':>13} {'later/iso':>9} {'first/iso':>9} {'disk*1.25/iso':>13}"
    )
    print(head)
    for pod in result.pods:
        for fr in pod.formats:
            disk = fr.case.disk_bytes()
            flag = "" if all(c.measured for c in fr.copies) else " *"
            print(
                f"{fr.case.runtime:<12} {fr.case.label:<13} {disk / 1024:>8.1f} {fr.first / MiB:>9.2f} {fr.later / MiB:>9.2f} "
                f"{fr.iso / MiB:>12.2f} {disk * 1.25 / MiB:>13.3f} {_ratio(fr.later, fr.iso):>9} {_ratio(fr.first, fr.iso):>9} "
                f"{_ratio(int(disk * 1.25), fr.iso):>13}{flag}"
            )
    if any(not c.measured for p in result.pods for f in p.formats for c in f.copies):
        print("(* a copy the pod did not grow for: the puller reported its prediction instead)")

    print("\n## Per runtime: sum of measured sizes vs the pod's total PSS growth")
    print(f"{'runtime':<12} {'copies':>6} {'growth MiB':>10} {'sum measured MiB':>16} {'measured/growth':>15} {'disk*1.25/growth':>16}")
    for pod in result.pods:
        every = [c for f in pod.formats for c in f.copies]
        measured = sum(c.size for c in every)
        disk = sum(f.case.disk_bytes() * len(f.copies) for f in pod.formats) * 1.25
        growth = pod.end - pod.start
        print(
            f"{RUNTIMES.get(pod.kind, pod.kind):<12} {len(every):>6} {growth / MiB:>10.1f} {measured / MiB:>16.1f} "
            f"{_ratio(measured, growth):>15} {_ratio(int(disk), growth):>16}"
        )

    triton = [p for p in result.pods if p.kind == "triton"]
    if triton:
        print("\n## Triton python-backend stubs: framework pages shared between copies (per stub, /proc smaps_rollup)")
        print("shared = RSS - private (pages other processes map too); the fresh server's first copy vs isolated shows")
        print("what the first copy of a format pays for mapping the framework first\n")
        print(
            f"{'format':<13} {'copy':<6} {'RSS MiB':>8} {'PSS MiB':>8} {'private MiB':>11} {'shared MiB':>10} "
            f"{'shared/RSS':>10} {'measured MiB':>12}"
        )
        for fr in triton[0].formats:
            stubbed = [c for c in fr.copies if c.stub is not None]
            if not stubbed:
                continue
            rows = [("first", [stubbed[0]])] + ([("later", stubbed[1:])] if len(stubbed) > 1 else [])
            for label, group in rows:
                def med(values: list[int]) -> float:
                    return statistics.median(values) / MiB
                stubs = [c.stub for c in group if c.stub is not None]
                rss, pss = med([s.rss for s in stubs]), med([s.pss for s in stubs])
                private, shared = med([s.private for s in stubs]), med([s.shared for s in stubs])
                print(
                    f"{fr.case.label:<13} {label:<6} {rss:>8.1f} {pss:>8.1f} {private:>11.1f} {shared:>10.1f} "
                    f"{shared / rss if rss else 0:>10.0%} {med([c.size for c in group]):>12.1f}"
                )
        print(
            "(read with every copy loaded: each stub maps the same pages, so first and later stubs look alike; PSS ="
            " private + shared / number of mappers, and a copy's measured size is about its private pages, except the"
            " first of a framework, which is also charged the shared pages it mapped first)"
        )
        print("\nfirst copy of a format vs one more copy, both in a fresh tritonserver (what the first pays in one-time costs):")
        for fr in triton[0].formats:
            print(
                f"  {fr.case.label:<13} first {fr.fresh_first / MiB:6.1f} MiB, one more {fr.iso / MiB:6.1f} MiB, "
                f"one-time {max(fr.fresh_first - fr.iso, 0) / MiB:6.1f} MiB"
            )

    imp = result.imports
    if imp is not None:
        mlserver = next((p for p in result.pods if p.kind == "mlserver"), None)
        print("\n## One-time imports on MLServer: the first copy of each format")
        print(
            "imports at first load = a pod started with MESHSERVE_WARM_IMPORTS=\"\"; at start-up = the default pod "
            "(mlserver_repository imports mlserver_sklearn, mlserver_xgboost, mlserver_lightgbm)\n"
        )
        print(f"{'format':<10} {'first, imports at load MiB':>26} {'second MiB':>10} {'first, imports at start-up MiB':>30} {'isolated MiB':>12}")
        firsts = {f.case.label: f for f in (mlserver.formats if mlserver else [])}
        for label, size in imp.first.items():
            fr = firsts.get(label)
            print(
                f"{label:<10} {size / MiB:>26.2f} {imp.second[label] / MiB:>10.2f} "
                f"{(fr.first / MiB if fr else float('nan')):>30.2f} {(fr.iso / MiB if fr else float('nan')):>12.2f}"
            )
        print(
            f"MLServer PSS before any load: imports at load {imp.pod_start / MiB:.1f} MiB, at start-up "
            f"{imp.default_pod_start / MiB:.1f} MiB (+{(imp.default_pod_start - imp.pod_start) / MiB:.1f} MiB paid once per pod)"
        )
        print(
            f"(the imports-at-load pod took them in the order {', '.join(IMPORT_ORDER)}: a later one finds what an earlier "
            "one imported; the default pod took sklearn, xgboost, lightgbm)"
        )

