"""The fault cases and what one case measures, shared by `make chaos` and the integration tests.

A case: steady load runs (`load.LoadGenerator`); after a warm-up the fault is injected (at
`injected`), held for its duration if it has one, then cleared (`cleared`; = `injected` for
an instant fault such as a kill); right after, every model is asked until it answers once
(the sweep); the load runs on for the after-window, stops, and the state is compared until it
settles (`harness.settle`). Measured:

* requests sent, failed by gRPC status;
* in flight while the pod died (a kill: answered after the kill, sent before the pod's
  supervisor had stopped all of it; other faults: at the injection): the bound on failures
  the "only in-flight requests fail for a dead pod" target sets;
* p99 latency during the fault (requests sent from `injected` until `recovered`) and after;
* served again: seconds from `injected` until every model that failed after the injection had
  answered again (its first success after its last failure, load and sweep both counted); 0
  when none failed. `recovered` = max(cleared, that moment);
* copies lost (a killed pod: its loaded copies at the injection; a hung pod: those it no
  longer holds when it resumes; a fault of the live state: every copy) and re-placed (of
  those models, how many have a loaded copy at the end);
* lost registrations and reservation/route leaks after the case.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from meshserve.cli.devstack import EXAMPLE_BUCKET

from .harness import CORRUPT, RUNTIME, ChaosStack, Consistency, isvc, settle, tails, wait_for
from .load import LoadGenerator, LoadSpec, Record, in_flight, in_flight_while, p99


@dataclass
class Timing:
    warmup: float = 10.0        # load before the injection
    after: float = 15.0         # load after recovery
    hold: float = 20.0          # how long a lasting fault lasts (SIGSTOP, Postgres down, storage down)
    sweep: float = 120.0        # deadline for every model to answer again
    settle: float = 90.0        # deadline for the state to become consistent
    warmup_answers: int = 0
    """Tests: instead of `warmup` seconds, until this many requests were answered OK."""
    after_answers: int = 0
    """Tests: instead of `after` seconds, until this many more were answered OK after the sweep."""


@dataclass
class Outcome:
    """What the fault's `inject` leaves for the case: the victim pod (if any), notes."""

    victim: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fault:
    name: str
    title: str
    inject: Callable[[ChaosStack, Timing], Outcome]
    """Injects the fault and returns when it is cleared (a lasting fault holds it for
    `timing.hold`, a kill returns at once); sets `Outcome.extra['cleared']` to the wall-clock time it
    ended, when not at once."""
    dead_pod: bool = False
    """The target 'only in-flight requests fail' applies (a pod killed)."""
    live_state: bool = False
    """The fault loses the live state (Redis): every copy counts as lost."""


@dataclass
class CaseResult:
    fault: Fault
    sent: int
    failed: Counter[str]
    in_flight: int
    """Requests out while the pod died (a kill: from the kill until its supervisor had stopped
    all of it; else at the injection): the bound the tests hold failures to."""
    in_flight_at_kill: int
    """Requests out at the very moment of the kill (or the injection): the strict reading."""
    p99_during: float | None
    p99_after: float | None
    served_again: float
    all_answered: bool
    unanswered: list[str]
    copies_lost: int
    copies_replaced: int
    state: Consistency
    outcome: Outcome
    details: dict[str, str]
    """gRPC status -> the details of its first failed request."""
    duration: float

    @property
    def failures(self) -> int:
        return sum(self.failed.values())


def busiest_pod(chaos: ChaosStack) -> str:
    pods = chaos.pods()
    return max(pods, key=lambda p: (len(p["models"]), p["id"]))["id"]


# -- the faults ----------------------------------------------------------------------------------

def _kill(which: tuple[str, ...]) -> Callable[[ChaosStack, Timing], Outcome]:
    def inject(chaos: ChaosStack, timing: Timing) -> Outcome:
        victim = busiest_pod(chaos)
        before = chaos.pod_status()[victim]
        address = next(p["grpcAddress"] for p in chaos.pods() if p["id"] == victim)
        killed = time.time()
        chaos.signal_pod(victim, signal.SIGKILL, which=which)
        # the pod has died whole once its supervisor stopped the rest of it and counted a
        # restart (killing the puller alone leaves its MLServer serving until then)
        wait_for(lambda: chaos.pod_status().get(victim, {}).get("restarts", 0) > before["restarts"], timeout=120,
                 what=f"{victim} restarted by the controller")
        stopped = time.time()
        # cleared once the controller's replacement (same pod id, new processes) has registered
        wait_for(lambda: any(p["id"] == victim and p["grpcAddress"] != address for p in chaos.pods()), timeout=120,
                 what=f"the replacement of {victim} registered")
        back = time.time()
        return Outcome(victim=victim, extra={"cleared": back, "killed": killed, "stopped": stopped,
                                             "restarts_before": before["restarts"]},
                       notes=[f"replacement pod registered {back - killed:.1f} s after the kill"])

    return inject


def _sigstop(chaos: ChaosStack, timing: Timing) -> Outcome:
    victim = busiest_pod(chaos)
    chaos.signal_pod(victim, signal.SIGSTOP)
    try:
        time.sleep(timing.hold)   # the fault's duration (what is measured), not a wait for a condition
    finally:
        chaos.signal_pod(victim, signal.SIGCONT)
    return Outcome(victim=victim, extra={"cleared": time.time()})


def _redis_kill(chaos: ChaosStack, timing: Timing) -> Outcome:
    proc = chaos.stack.group.find("redis")
    assert proc is not None
    said = len(chaos.said)
    os.kill(proc.popen.pid, signal.SIGKILL)
    wait_for(lambda: "redis restarted (restart" in " ".join(chaos.said[said:]), timeout=60, what="Redis restarted by the supervisor")
    return Outcome(extra={"cleared": _rebuilt(chaos)}, notes=[m for m in chaos.said[said:] if m.startswith("redis")])


def _rebuilt(chaos: ChaosStack) -> float:
    """When every runtime pod is registered again in the (empty) Redis: the live state rebuilt."""
    wait_for(lambda: len(chaos.pods()) >= chaos.config.pods, timeout=120, what="the pods registered again in Redis")
    return time.time()


def _redis_flush(chaos: ChaosStack, timing: Timing) -> Outcome:
    client = redis.Redis.from_url(chaos.stack.redis_url)
    try:
        client.flushall()
    finally:
        client.close()
    return Outcome(extra={"cleared": _rebuilt(chaos)})


def _postgres_down(chaos: ChaosStack, timing: Timing) -> Outcome:
    pids = chaos.postgres_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(timing.hold)   # the outage's duration
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return Outcome(extra={"cleared": time.time()}, notes=[f"SIGSTOP of the postmaster and {len(pids) - 1} backends"])


def _router_restart(chaos: ChaosStack, timing: Timing) -> Outcome:
    proc = chaos.stack.group.find("router")
    assert proc is not None
    said = len(chaos.said)
    os.kill(proc.popen.pid, signal.SIGKILL)
    wait_for(lambda: "router restarted (restart" in " ".join(chaos.said[said:]), timeout=90, what="the router restarted by the supervisor")
    return Outcome(extra={"cleared": time.time()}, notes=["router killed with SIGKILL, restarted by the supervisor"])


def _scheduler_killed_loading(chaos: ChaosStack, timing: Timing) -> Outcome:
    """Two scheduler replicas on the same Redis and Postgres (a second one is started the first
    time); the one the router asks, which drives the loads, is killed with SIGKILL while a load
    is in progress (the three most asked models are unloaded until one is seen loading), and
    `meshserve dev`'s supervisor restarts it. The load it started either finishes on the pod or
    is released once older than any live load (the pod's heartbeat, `pods.Pods`); the other
    replica keeps the leader's duties."""
    if not chaos.extra_schedulers:
        chaos.extra_schedulers.append(chaos.stack.start_extra_scheduler())
    proc = chaos.stack.group.find("scheduler")
    assert proc is not None
    said = len(chaos.said)
    for _ in range(20):
        chaos.unload(chaos.names[:3])
        try:
            found = wait_for(lambda: [p for p in chaos.pods() if p["loading"]], timeout=5, what="a load in progress",
                             interval=0.05)
        except TimeoutError:
            continue
        loading = {p["id"]: p["loading"] for p in found}
        killed = time.time()
        os.kill(proc.popen.pid, signal.SIGKILL)
        break
    else:
        raise NotDoable("no load was seen in progress to kill the scheduler during")
    wait_for(lambda: "scheduler restarted (restart" in " ".join(chaos.said[said:]), timeout=120,
             what="the scheduler restarted by the supervisor")
    return Outcome(extra={"cleared": time.time(), "killed": killed},
                   notes=[f"killed with loads in progress on {loading}; restarted {time.time() - killed:.1f} s later"])


def _storage_down(chaos: ChaosStack, timing: Timing) -> Outcome:
    proc = chaos.stack.group.find("s3")
    assert proc is not None
    # loads while S3 hangs: copies evicted under the Zipf traffic come back, and the three
    # most asked models are unloaded as it starts, so their next requests need the storage
    loads_before = _loads(chaos)
    os.kill(proc.popen.pid, signal.SIGSTOP)
    try:
        chaos.unload(chaos.names[:3])
        time.sleep(timing.hold)   # the outage's duration
    finally:
        os.kill(proc.popen.pid, signal.SIGCONT)
    return Outcome(extra={"cleared": time.time(), "loads_during": _loads(chaos) - loads_before},
                   notes=["moto S3 stopped (SIGSTOP): requests to it hang"])


def _loads(chaos: ChaosStack) -> int:
    events = chaos.admin("/v1/events?limit=1000")["items"]
    return sum(1 for e in events if e["kind"] == "placed")


def _corrupt_model(chaos: ChaosStack, timing: Timing) -> Outcome:
    client = chaos.stack.s3_client()
    client.put_object(Bucket=EXAMPLE_BUCKET, Key=f"chaos/{CORRUPT}/model.joblib", Body=b"not a joblib file\x00" * 64)
    doc = isvc(CORRUPT, f"chaos/{CORRUPT}/model.joblib")
    chaos.apply([doc])
    wait_for(lambda: CORRUPT in chaos.registered(), timeout=60, what="the corrupt model registered")
    codes: Counter[str] = Counter()
    deadline = time.monotonic() + timing.hold
    while time.monotonic() < deadline:
        codes[chaos.answer(CORRUPT, timeout=30)] += 1
    model_id = chaos.registered()[CORRUPT]
    view = chaos.admin(f"/v1/models/{model_id}")
    chaos.delete([doc])
    wait_for(lambda: CORRUPT not in chaos.registered(), timeout=60, what="the corrupt model unregistered")
    failure = view.get("lastFailure") or {}
    return Outcome(
        extra={"cleared": time.time(), "corrupt_codes": dict(codes), "corrupt_failure": failure},
        notes=[f"{sum(codes.values())} requests for the corrupt model: {dict(codes)}; recorded failure: "
               f"{failure.get('reason')}: {(failure.get('message') or '')[:160]}"],
    )


def _disk_full(chaos: ChaosStack, timing: Timing) -> Outcome:
    """One more pod whose model directory is a tmpfs of 64 KiB (smaller than one model): every
    load there fails with ENOSPC. Its capacity (1 MiB) leaves the least room after a
    placement, so best fit picks it first for every load; the three most asked models are
    unloaded once it is up, so loads are needed at once. Needs mount(2) (root); the pod is
    stopped and the tmpfs unmounted after."""
    pod_id = "chaos-diskfull"
    models = chaos.stack.root / "pods" / pod_id / "models"
    models.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(models)], capture_output=True, text=True)
    if done.returncode != 0:
        raise NotDoable(f"a small filesystem for the model directory needs mount(2): {done.stderr.strip()}")
    try:
        handle = chaos.stack.start_pod(pod_id=pod_id, capacity_bytes=1 << 20)
        chaos.stack.wait_for_pods([handle])
        chaos.unload(chaos.names[:3])
        time.sleep(timing.hold)   # the fault's duration: the load generator is what is measured
        events = [e for e in chaos.admin(f"/v1/events?pod={pod_id}&limit=1000")["items"]]
        failed = [e for e in events if e["kind"] == "failed"]
        notes = [f"{len(failed)} loads failed on the full disk"]
        if failed:
            notes.append(f"first: {failed[-1]['message'][:200]}")
        for proc in (handle.puller, handle.mlserver):
            chaos.stack.group.stop(proc)  # type: ignore[arg-type]
        chaos.stack.pods.remove(handle)
        wait_for(lambda: pod_id not in {p["id"] for p in chaos.pods()}, timeout=60, what="the disk-full pod gone")
        return Outcome(victim=pod_id, extra={"cleared": time.time(), "failed_loads": len(failed)}, notes=notes)
    finally:
        subprocess.run(["umount", "-l", str(models)], capture_output=True)
        shutil.rmtree(models.parent, ignore_errors=True)


class NotDoable(RuntimeError):
    """The fault cannot be made on this machine; the message says why."""


FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("kill-mlserver", "kill -9 of a pod's MLServer", _kill(("mlserver",)), dead_pod=True),
    Fault("kill-puller", "kill -9 of a pod's puller", _kill(("puller",)), dead_pod=True),
    Fault("kill-pod", "kill -9 of a pod (MLServer and puller)", _kill(("mlserver", "puller")), dead_pod=True),
    Fault("sigstop-pod", "SIGSTOP of a pod (hung, not dead)", _sigstop),
    Fault("redis-kill", "Redis kill -9 (supervisor restarts it)", _redis_kill, live_state=True),
    Fault("redis-flush", "Redis FLUSHALL", _redis_flush, live_state=True),
    Fault("postgres-down", "Postgres down (SIGSTOP)", _postgres_down),
    Fault("scheduler-kill-loading", "scheduler replica kill -9 while loading (2 replicas)", _scheduler_killed_loading),
    Fault("router-restart", "router kill -9 (supervisor restarts it)", _router_restart),
    Fault("storage-down", "S3 endpoint hung (SIGSTOP) during loads", _storage_down),
    Fault("corrupt-model", "a model whose every load fails (corrupt file)", _corrupt_model),
    Fault("disk-full", "model directory's disk full (a pod on a 64 KiB tmpfs)", _disk_full),
]}


# -- one case -----------------------------------------------------------------------------------

def served_again_after(records: list[Record], swept: dict[int, float], injected: float) -> float:
    """Seconds from `injected` until every model that failed after it answered again."""
    last_fail: dict[int, float] = {}
    for r in records:
        if r.code != "OK" and r.sent >= injected - r.latency:   # failed at or after the injection
            last_fail[r.model] = max(last_fail.get(r.model, 0.0), r.done)
    worst = 0.0
    for model, failed_at in last_fail.items():
        ok = [r.done for r in records if r.model == model and r.code == "OK" and r.done >= failed_at]
        if model in swept and swept[model] >= failed_at:
            ok.append(swept[model])
        again = min(ok) if ok else float("inf")
        worst = max(worst, again - injected)
    return worst


def run_case(chaos: ChaosStack, fault: Fault, *, rate: float, processes: int, timing: Timing,
             request_timeout: float = 15.0, on_injected: Callable[[Outcome], None] | None = None) -> CaseResult:
    """One case under load (see the module docstring); `request_timeout` is each request's
    deadline (a request still waiting for its model's re-placement then fails)."""
    started = time.monotonic()
    registered = chaos.registered()
    names = chaos.names
    spec = LoadSpec(address=chaos.stack.router_grpc, models=tuple(names), rate=rate, processes=processes,
                    timeout=request_timeout)
    gen = LoadGenerator(spec).start()
    try:
        # the clients are up once each has had answers (spawned processes take a while to start)
        gen.wait_answered(3 * processes, timeout=300, what="from the starting clients")
        if timing.warmup_answers:
            gen.wait_answered(timing.warmup_answers, timeout=300, what="before the fault")
        else:
            time.sleep(timing.warmup)   # the warm-up phase of the bench's timeline
        before_pods = {p["id"]: {m["id"] for m in p["models"]} for p in chaos.pods()}
        injected = time.time()
        outcome = fault.inject(chaos, timing)
        cleared = float(outcome.extra.get("cleared", injected))
        at_clear = {p["id"]: {m["id"] for m in p["models"]} for p in chaos.pods()}
        swept_at = chaos.sweep(names, deadline=time.monotonic() + timing.sweep)
        if timing.after_answers:
            gen.wait_answered(timing.after_answers, timeout=300, what="after the fault")
        else:
            time.sleep(timing.after)    # the after phase of the bench's timeline
    finally:
        records = gen.stop()
    if on_injected is not None:
        on_injected(outcome)
    state = settle(chaos, registered, timeout=timing.settle)
    index = {n: i for i, n in enumerate(names)}
    swept = {index[n]: t for n, t in swept_at.items()}
    served_again = served_again_after(records, swept, injected)
    recovered = max(cleared, injected + served_again)
    if fault.live_state:
        lost_models = set().union(*before_pods.values()) if before_pods else set()
        lost = sum(len(v) for v in before_pods.values())
    elif fault.dead_pod and outcome.victim is not None:
        lost_models = before_pods.get(outcome.victim, set())   # the replacement starts empty
        lost = len(lost_models)
    elif outcome.victim is not None:   # a hung pod keeps what it still holds when it resumes
        lost_models = before_pods.get(outcome.victim, set()) - at_clear.get(outcome.victim, set())
        lost = len(lost_models)
    else:
        lost_models, lost = set(), 0
    now = chaos.copies()
    replaced = sum(1 for m in lost_models if now.get(m))
    failed = Counter(r.code for r in records if r.code != "OK")
    details: dict[str, str] = {}
    for r in records:
        if r.code != "OK":
            details.setdefault(r.code, r.detail)   # the first of each status
    return CaseResult(
        fault=fault,
        sent=len(records),
        failed=failed,
        in_flight_at_kill=in_flight(records, float(outcome.extra.get("killed", injected))),
        in_flight=in_flight_while(records, float(outcome.extra.get("killed", injected)), float(outcome.extra.get("stopped", injected))),
        p99_during=p99([r.latency for r in records if injected <= r.sent < recovered]),
        p99_after=p99([r.latency for r in records if r.sent >= recovered]),
        served_again=served_again,
        all_answered=len(swept_at) == len(names),
        unanswered=sorted(set(names) - set(swept_at)),
        copies_lost=lost,
        copies_replaced=replaced,
        state=state,
        outcome=outcome,
        details=details,
        duration=time.monotonic() - started,
    )


def runtime_pods_ready(chaos: ChaosStack) -> bool:
    """Every runtime pod registered at its current processes' address, none waiting for a restart."""
    status = chaos.pod_status()
    pods = chaos.pods()
    return len(pods) == chaos.config.pods and all(not s.get("waiting") for s in status.values()) and all(
        p["runtime"] == RUNTIME for p in pods
    )


def missed_targets(result: CaseResult) -> list[str]:
    """The issue's targets that do not depend on the clock, each missed one said in a line:
    every model answers again, nothing registered lost, no reservation or route leak, and for
    a dead pod only the requests in flight at the kill fail."""
    missed = []
    if result.sent == 0:
        missed.append("no request was sent")
    if not result.all_answered:
        missed.append(f"models that never answered again: {result.unanswered}")
    if result.state.lost:
        missed.append(f"registrations lost: {result.state.lost}")
    missed += [f"leak: {leak}" for leak in result.state.leaks]
    if result.fault.dead_pod and result.failures > result.in_flight:
        missed.append(f"{result.failures} requests failed ({dict(result.failed)}), "
                      f"only {result.in_flight} were in flight while the pod died; first of each: {result.details}")
    return missed


def assert_recovered(chaos: ChaosStack, result: CaseResult) -> None:
    """For the tests: no target missed (the stack's log tails in the message when one is),
    the supervisor still running, and every runtime pod registered again."""
    missed = missed_targets(result)
    if missed:
        raise AssertionError("\n".join(missed) + "\n" + tails(chaos))
    if chaos.supervisor_failure is not None:
        raise AssertionError(f"the supervisor gave up: {chaos.supervisor_failure}")
    wait_for(lambda: len(chaos.pods()) == chaos.config.pods, timeout=120, what="every runtime pod registered again")
