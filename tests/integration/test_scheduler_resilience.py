"""Scheduler behaviour that needs its own stack: private Redis and Postgres that the
tests stop and restart, fast heartbeats, a low scale-up threshold.

The tests share that stack (starting one takes most of a minute) and run as one scenario,
in file order: later tests rely on models the earlier ones registered ("min2", "hot"),
which is the point of the Redis-restart test ("nothing registered is lost"). Each test that
takes a pod out of service (drained, killed) starts a replacement, so the ones after it
still have three usable pods."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis
import tritonclient.grpc as grpcclient

from meshserve.cli.devstack import Stack, StackConfig
from meshserve.common.proto.meshserve.v1 import scheduler_pb2, scheduler_pb2_grpc

from .conftest import EXAMPLES, IRIS_URI, MNIST_URI, mnist_inputs, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        root=Path(tmp_path_factory.mktemp("resilience")),
        pods=3,
        extra_env={
            "MESHSERVE_SCHEDULER_POD_TIMEOUT_SECONDS": "8",
            "MESHSERVE_SCHEDULER_SCALE_UP_RPM_THRESHOLD": "30",
            "MESHSERVE_SCHEDULER_SCALING_INTERVAL_SECONDS": "1",
            "MESHSERVE_SCHEDULER_MIN_RESIDENCY_SECONDS": "0",
            # longer than the default 30 s: the Redis-restart window below must not outlast it on a slow machine
            "MESHSERVE_ROUTER_ROUTE_FALLBACK_SECONDS": "60",
        },
    )
    stack = Stack(config)
    stack.start()
    try:
        stack.upload_examples(EXAMPLES)
        yield stack
    finally:
        stack.stop()


def _model(stack: Stack, name: str) -> dict:  # type: ignore[type-arg]
    return stack.admin("GET", f"/v1/models/{name}").json()  # type: ignore[no-any-return]


def _infer(stack: Stack, name: str, *, timeout: float | None = None) -> list[list[int]]:
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        return client.infer(name, mnist_inputs(), client_timeout=timeout).as_numpy("predict").tolist()  # type: ignore[no-any-return]
    finally:
        client.close()


def _route_snapshots(stack: Stack) -> float:
    """How many route snapshots the router has applied (its /metrics)."""
    for line in httpx.get(f"{stack.router_rest}/metrics", timeout=5).text.splitlines():
        if line.startswith("meshserve_router_route_snapshots_total "):
            return float(line.split()[1])
    return 0.0


def test_min_copies_are_placed_at_registration_on_different_pods(own_stack: Stack) -> None:
    assert own_stack.register("min2", storage_uri=MNIST_URI, minCopies=2).status_code == 201
    wait_for(lambda: sum(c["state"] == "loaded" for c in _model(own_stack, "min2")["copies"]) == 2, timeout=30, what="two copies")
    pods = [c["pod"] for c in _model(own_stack, "min2")["copies"]]
    assert len(set(pods)) == 2
    # first loads on fresh pods: the size is a measured memory delta, not a guess
    assert (_model(own_stack, "min2")["sizes"]["measured"] or 0) > 0


def test_hot_model_gets_another_copy_and_cools_back(own_stack: Stack) -> None:
    assert own_stack.register("hot", storage_uri=MNIST_URI).status_code == 201
    client = grpcclient.InferenceServerClient(own_stack.router_grpc)
    try:
        for _ in range(80):  # 80 requests within a minute: above 30/min per copy
            assert client.infer("hot", mnist_inputs()).as_numpy("predict").tolist() == [[8]]
    finally:
        client.close()
    wait_for(lambda: len(_model(own_stack, "hot")["copies"]) >= 2, timeout=40, what="a scale-up")

    def kinds() -> list[str]:
        return [e["kind"] for e in own_stack.admin("GET", "/v1/events?model=hot&limit=100").json()["items"]]

    # the event is written once the second copy has loaded; the copy is listed from its reservation on
    wait_for(lambda: "scaled-up" in kinds(), timeout=40, what="the scaled-up event")
    assert kinds().count("placed") >= 2


def test_drain_moves_copies_off_a_pod(own_stack: Stack) -> None:
    assert own_stack.register("drainme", storage_uri=IRIS_URI).status_code == 201
    client = grpcclient.InferenceServerClient(own_stack.router_grpc)
    assert client.is_model_ready("drainme")
    [copy] = _model(own_stack, "drainme")["copies"]
    result = own_stack.admin("POST", f"/v1/pods/{copy['pod']}:drain").json()
    assert "drainme" in result["moved"]
    copies = _model(own_stack, "drainme")["copies"]
    assert [c["pod"] for c in copies] != [copy["pod"]] and len(copies) == 1
    assert client.is_model_ready("drainme")
    pods = {p["id"]: p for p in own_stack.admin("GET", "/v1/pods").json()["items"]}
    assert pods[copy["pod"]]["draining"] is True
    client.close()
    drained = next(p for p in own_stack.pods if p.pod_id == copy["pod"])
    for proc in (drained.puller, drained.mlserver):    # a drained pod is retired, then replaced
        own_stack.group.stop(proc)  # type: ignore[arg-type]
    own_stack.wait_for_pods([own_stack.start_pod()])  # keep three usable pods for the tests below


def test_a_dead_single_copy_is_replaced_at_once_not_after_the_pod_timeout(own_stack: Stack) -> None:
    """The router reports the pod whose copy failed; the scheduler checks it and re-places."""
    assert own_stack.register("lonely", storage_uri=MNIST_URI).status_code == 201
    assert _infer(own_stack, "lonely") == [[8]]
    [copy] = _model(own_stack, "lonely")["copies"]
    victim = next(p for p in own_stack.pods if p.pod_id == copy["pod"])
    own_stack.group.stop(victim.mlserver)  # type: ignore[arg-type]  # the puller stays up
    assert _infer(own_stack, "lonely") == [[8]]  # no error: retried on a new copy
    [new] = _model(own_stack, "lonely")["copies"]
    assert new["pod"] != victim.pod_id
    lost = own_stack.admin("GET", f"/v1/events?pod={victim.pod_id}").json()["items"]
    assert any(e["kind"] == "pod-lost" and "reported" in e["message"] for e in lost)
    own_stack.group.stop(victim.puller)  # type: ignore[arg-type]
    own_stack.wait_for_pods([own_stack.start_pod()])  # keep three pods for the tests below


def test_redis_restart_loses_nothing(own_stack: Stack) -> None:
    assert own_stack.register("survivor", storage_uri=MNIST_URI).status_code == 201
    assert _infer(own_stack, "survivor") == [[8]]
    own_stack.restart_redis()
    # the registry mirror is rebuilt from Postgres, the copies from the pullers' heartbeats
    wait_for(lambda: _model(own_stack, "survivor").get("state") == "Loaded", timeout=30, what="copy re-adopted")
    models = {m["id"] for m in own_stack.admin("GET", "/v1/models?limit=1000").json()["items"]}
    assert {"survivor", "min2", "hot"} <= models
    assert _infer(own_stack, "survivor") == [[8]]
    placed = [e for e in own_stack.admin("GET", "/v1/events?model=survivor").json()["items"] if e["kind"] == "placed"]
    assert len(placed) == 1  # served by the adopted copy, not a reload


def test_router_serves_loaded_models_while_the_scheduler_rebuilds_after_a_redis_restart(own_stack: Stack) -> None:
    """Right after a Redis restart the scheduler knows no copy: its route snapshots have no
    route for a model that is still loaded. The pullers are frozen (SIGSTOP) so that no pod
    reports again; the router must answer from the routes it had (its fallback), through
    the vmodel too, both after the first snapshot and after the one the rebuilt registry
    mirror brings (every model listed, none with a copy). Nothing is loaded again."""
    assert own_stack.register("window", storage_uri=MNIST_URI).status_code == 201
    assert _infer(own_stack, "window") == [[8]]
    put = own_stack.admin("PUT", "/v1/vmodels/window-vm", json={"targetModelId": "window"})
    assert put.status_code == 200, put.text

    def vmodel_served() -> bool:  # once the router has the vmodel's route (the scheduler knows no model by that name)
        try:
            return _infer(own_stack, "window-vm", timeout=10) == [[8]]
        except Exception:
            return False

    wait_for(vmodel_served, timeout=30, what="the vmodel's route at the router")
    pullers = [p.puller for p in own_stack.pods if p.puller.popen.poll() is None]  # type: ignore[attr-defined]
    with grpc.insecure_channel(own_stack.scheduler_grpc) as channel:
        # a route watcher of our own sees the snapshots the router is sent, in the same order
        updates = scheduler_pb2_grpc.SchedulerStub(channel).WatchRoutes(
            scheduler_pb2.WatchRoutesRequest(router_id="resilience-test"), timeout=120
        )
        assert next(updates).snapshot
        before = _route_snapshots(own_stack)
        for proc in pullers:
            proc.popen.send_signal(signal.SIGSTOP)  # type: ignore[attr-defined]
        try:
            own_stack.restart_redis()
            seen = 0
            mirrored = False
            while not mirrored:
                update = next(updates)
                if not update.snapshot:
                    continue
                seen += 1
                routes = {r.model_id: list(r.endpoints) for r in update.routes}
                assert not routes.get("window"), "a pod re-reported while its puller was frozen"
                mirrored = "window" in routes
                wait_for(lambda n=seen: _route_snapshots(own_stack) >= before + n, timeout=30, what="the router's snapshot")
                assert _infer(own_stack, "window", timeout=10) == [[8]]
                assert _infer(own_stack, "window-vm", timeout=10) == [[8]]
        finally:
            for proc in pullers:
                proc.popen.send_signal(signal.SIGCONT)  # type: ignore[attr-defined]
            updates.cancel()
    wait_for(lambda: _model(own_stack, "window").get("state") == "Loaded", timeout=30, what="copy re-adopted")
    assert _infer(own_stack, "window-vm") == [[8]]
    placed = [e for e in own_stack.admin("GET", "/v1/events?model=window").json()["items"] if e["kind"] == "placed"]
    assert len(placed) == 1  # answered by the copy loaded before the restart, never loaded again


def test_postgres_down_keeps_warm_models_serving_and_fails_registration_clearly(own_stack: Stack) -> None:
    assert own_stack.register("warm", storage_uri=IRIS_URI).status_code == 201
    client = grpcclient.InferenceServerClient(own_stack.router_grpc)
    assert client.is_model_ready("warm")
    assert own_stack.postgres is not None
    own_stack.postgres.stop()
    try:
        assert _infer(own_stack, "survivor") == [[8]]
        response = own_stack.register("during-outage", storage_uri=IRIS_URI)
        assert response.status_code == 503
        assert "Postgres" in response.json()["error"]
        with grpc.insecure_channel(own_stack.scheduler_grpc) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            reply = stub.EnsureLoaded(scheduler_pb2.EnsureLoadedRequest(model_id="warm"), timeout=10)
            assert reply.endpoints
    finally:
        own_stack.postgres.start()
        client.close()
    wait_for(lambda: own_stack.register("after-outage", storage_uri=IRIS_URI).status_code == 201, timeout=30, what="registry back")


async def test_two_scheduler_replicas_on_tight_pods_never_overcommit_or_double_load(own_stack: Stack) -> None:
    """200 models, two replicas racing EnsureLoaded for each, two small pods of their own runtime."""
    tight = {"MESHSERVE_PULLER_RUNTIME": "tight-rt", "MESHSERVE_PULLER_SUPPORTED_FORMATS": ""}
    pods = [own_stack.start_pod(capacity_bytes=6 * 1024 * 1024, env=tight) for _ in range(2)]
    own_stack.wait_for_pods(pods)
    second_grpc, _ = own_stack.start_extra_scheduler()
    names = [f"tight-{i:03d}" for i in range(200)]
    for name in names:
        response = own_stack.register(name, storage_uri=IRIS_URI, runtime="tight-rt", sizeBytes=200_000)
        assert response.status_code == 201, response.text

    outcomes: dict[str, int] = {}
    reasons: set[str] = set()
    async with grpc.aio.insecure_channel(own_stack.scheduler_grpc) as a, grpc.aio.insecure_channel(second_grpc) as b:
        stubs = [scheduler_pb2_grpc.SchedulerStub(a), scheduler_pb2_grpc.SchedulerStub(b)]

        async def ensure(stub: scheduler_pb2_grpc.SchedulerStub, name: str) -> None:
            try:
                await stub.EnsureLoaded(scheduler_pb2.EnsureLoadedRequest(model_id=name), timeout=120)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except grpc.aio.AioRpcError as err:
                assert err.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE), err.details()
                assert err.details()
                outcomes[err.code().name] = outcomes.get(err.code().name, 0) + 1
                reasons.add(f"{err.code().name}: {(err.details() or '')[:120]}")

        import asyncio

        await asyncio.gather(*[ensure(stub, name) for name in names for stub in stubs])
    assert outcomes.get("ok", 0) >= 100, outcomes
    listed = {p["id"]: p for p in own_stack.admin("GET", "/v1/pods").json()["items"]}
    for pod in pods:
        info = listed[pod.pod_id]
        assert info["allocatedBytes"] == sum(m["bytes"] for m in info["models"])
        assert info["allocatedBytes"] <= info["capacityBytes"]
    # never two loaded copies of one model at once (no double load): replayed from the route
    # log, where the copy scripts record every copy loaded or gone in the order it happened
    # (the events are written after the fact, by two processes, so their order is not that)
    client = redis.Redis.from_url(own_stack.redis_url, decode_responses=True)
    try:
        flat = client.lrange(f"{own_stack.key_prefix}:routelog", 0, -1)
    finally:
        client.close()
    loaded: dict[str, set[str]] = {}
    copy_changes = 0
    for kind, model, pod in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
        if kind == "+":
            loaded.setdefault(model, set()).add(pod)
            assert len(loaded[model]) == 1, (model, loaded[model])
            copy_changes += 1
        elif kind == "-":
            loaded.get(model, set()).discard(pod)
            copy_changes += 1
        elif kind == "P":
            for held in loaded.values():
                held.discard(model)   # a P entry names the pod in the model's place
    assert copy_changes >= outcomes["ok"] // 2, copy_changes
    for name in names:
        assert len(_model(own_stack, name)["copies"]) <= 1


def test_dead_pod_is_dropped_from_routes_and_its_min_copies_replaced(own_stack: Stack) -> None:
    copies = _model(own_stack, "min2")["copies"]
    victim = next(p for p in own_stack.pods if p.pod_id == copies[0]["pod"])
    for proc in (victim.puller, victim.mlserver):  # SIGKILL: no goodbye, only missing heartbeats
        proc.popen.kill()  # type: ignore[attr-defined]
        proc.popen.wait(10)  # type: ignore[attr-defined]
    wait_for(
        lambda: victim.pod_id not in {p["id"] for p in own_stack.admin("GET", "/v1/pods").json()["items"]},
        timeout=30,
        what="pod removal",
    )
    events = own_stack.admin("GET", f"/v1/events?pod={victim.pod_id}").json()["items"]
    assert any(e["kind"] == "pod-lost" and "no heartbeat" in e["message"] for e in events)
    wait_for(
        lambda: len([c for c in _model(own_stack, "min2")["copies"] if c["state"] == "loaded"]) == 2,
        timeout=40,
        what="minCopies re-placed",
    )
    assert victim.pod_id not in {c["pod"] for c in _model(own_stack, "min2")["copies"]}
    assert _infer(own_stack, "min2") == [[8]]
