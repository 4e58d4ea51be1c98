"""Cluster scope (`MESHSERVE_CONTROLLER_NAMESPACE_SCOPE=false`) against the fake API server and a
REAL scheduler process (Redis + Postgres of the machine, a private key prefix and database).

Namespaces `team-a` and `team-b` (labelled `modelmesh-enabled: "true"`) and `team-c` (not) each
hold an InferenceService named `example`. What must hold:
* the two labelled ones are two vmodels and two models at the scheduler (`<ns>__example`,
  `<ns>__example__isvc-<hash>`), pinned to their own namespace's runtime (`rt:<ns>__mlserver-1.x`);
* each labelled namespace gets its runtime Deployment (pods register as `<ns>__<runtime>`) and
  its router Deployment + Service (`MESHSERVE_ROUTER_NAMESPACE=<ns>`) + PodDisruptionBudget
  (owned by the router Deployment); a namespaced
  ServingRuntime overrides the ClusterServingRuntime of the same name in its namespace only;
* `team-c` is ignored until it is labelled, then served;
* removing the label deletes that namespace's runtime Deployments and router (upstream) but
  keeps its registrations; a delete there is still carried out through our finalizer;
* an InferenceService deleted while the controller is down is unregistered when it returns.
Every request of the controller passes the RBAC of deploy/kustomize (the fixture checks).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as pbg
from meshserve.controller.events import KubeEventRecorder
from meshserve.controller.finalizers import FINALIZER
from meshserve.controller.kube import KubeApi, api_client_from
from meshserve.controller.scheduler_client import GrpcScheduler
from meshserve.controller.worker import Reconciler, RouterOptions

from .conftest import NAMESPACE, FakeKube, eventually, free_port
from .test_kube_controller import isvc, serving_runtime

pytestmark = pytest.mark.timeout(300)

TEAMS = ("team-a", "team-b", "team-c")
CSRS = "/apis/serving.kserve.io/v1alpha1/clusterservingruntimes"


def ns_path(ns: str) -> str:
    return f"/api/v1/namespaces/{ns}"


def isvcs(ns: str) -> str:
    return f"/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices"


def deployment(ns: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    base = os.environ.get("MESHSERVE_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    url = make_url(base)
    name = f"meshserve_cs_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url.set(drivername="postgresql+psycopg", database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    made = url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    subprocess.run([sys.executable, "-m", "meshserve.scheduler", "migrate"], check=True, timeout=120,
                   env={**os.environ, "MESHSERVE_SCHEDULER_DATABASE_URL": made})
    yield made
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def real_scheduler(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m meshserve.scheduler` on a free port, one for the module (it takes a while to
    import on a busy machine); yields its gRPC address."""
    port = free_port()
    env = {
        **os.environ,
        "MESHSERVE_SCHEDULER_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "MESHSERVE_SCHEDULER_ADMIN_HOST": "127.0.0.1",
        "MESHSERVE_SCHEDULER_ADMIN_PORT": str(free_port()),
        "MESHSERVE_SCHEDULER_METRICS_PORT": "0",
        "MESHSERVE_SCHEDULER_DATABASE_URL": database_url,
        "MESHSERVE_SCHEDULER_REDIS_URL": os.environ.get("MESHSERVE_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "MESHSERVE_SCHEDULER_KEY_PREFIX": f"cs{uuid.uuid4().hex[:8]}",
    }
    log_path = tmp_path_factory.mktemp("scheduler") / "scheduler.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "meshserve.scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pbg.SchedulerStub(channel)
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"scheduler exited: {log_path.read_text()[-3000:]}")
                try:
                    stub.GetVModelStatus(pb.GetVModelStatusRequest(vmodel_id="probe"), timeout=1)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"scheduler not answering: {log_path.read_text()[-3000:]}") from None
                    time.sleep(0.2)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def cluster_controller(kube: FakeKube, scheduler_address: str) -> AsyncIterator[Reconciler]:
    api_client = await api_client_from(str(kube.kubeconfig))
    channel = grpc.aio.insecure_channel(scheduler_address)
    api = KubeApi(api_client, request_timeout=5)
    reconciler = Reconciler(
        api=api, scheduler=GrpcScheduler(channel, timeout=5), namespace=NAMESPACE,
        config_map_name="model-serving-config", scheduler_address="meshserve-scheduler:8034",
        watch_timeout_seconds=30, events=KubeEventRecorder(api, namespace=NAMESPACE, repeat_interval=0, instance="t"),
        finalizer=FINALIZER, cluster_scope=True, router=RouterOptions(image="meshserve/router:test", replicas=1),
    )
    task = asyncio.create_task(reconciler.run(), name="reconciler")
    try:
        await eventually(lambda: _value(reconciler.ready.is_set()), what="informers synced")
        yield reconciler
    finally:
        reconciler.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.close()
        await api_client.close()


async def _value(v: Any) -> Any:
    return v


async def vmodel(stub: pbg.SchedulerStub, vmodel_id: str) -> pb.VModelStatusInfo | None:
    info = await stub.GetVModelStatus(pb.GetVModelStatusRequest(vmodel_id=vmodel_id, owner="isvc"), timeout=5)
    return None if info.status == pb.VMODEL_NOT_FOUND else info


def env_of(dep: dict[str, Any], container: str) -> dict[str, str]:
    c = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == container)
    return {e["name"]: e.get("value", "") for e in c.get("env") or []}


async def label(kube: FakeKube, ns: str, value: str | None) -> None:
    await kube.request("PATCH", ns_path(ns), {"metadata": {"labels": {"modelmesh-enabled": value}}},
                       content_type="application/merge-patch+json")


async def test_two_namespaces_same_name_labels_overrides_and_finalizers(fakekube: FakeKube, real_scheduler: str) -> None:
    kube = fakekube
    await kube.apply("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    for ns in TEAMS:
        labels = {"modelmesh-enabled": "true"} if ns != "team-c" else {}
        await kube.apply("/api/v1/namespaces", {"metadata": {"name": ns, "labels": labels}})
    csr = serving_runtime()
    csr["kind"] = "ClusterServingRuntime"
    await kube.apply(CSRS, csr)
    override = serving_runtime()               # team-a's own mlserver-1.x: another image
    override["spec"]["containers"][0]["image"] = "example.com/custom-mlserver:1"
    await kube.apply("/apis/serving.kserve.io/v1alpha1/namespaces/team-a/servingruntimes", override)
    for ns in TEAMS:
        await kube.apply(isvcs(ns), isvc("example"))
    # team-a's own storage-config names a claim: mounted in team-a's runtime pods only
    claim = base64.b64encode(json.dumps({"type": "pvc", "name": "team-a-claim"}).encode()).decode()
    await kube.apply(f"{ns_path('team-a')}/secrets", {"metadata": {"name": "storage-config"}, "data": {"models": claim}})
    await kube.apply(f"{ns_path('team-a')}/secrets", {"metadata": {"name": "unrelated"}, "data": {"x": claim}})
    channel = grpc.aio.insecure_channel(real_scheduler)
    stub = pbg.SchedulerStub(channel)
    try:
        async with cluster_controller(kube, real_scheduler):
            a = await eventually(lambda: vmodel(stub, "team-a__example"), within=30, what="team-a's vmodel")
            b = await eventually(lambda: vmodel(stub, "team-b__example"), within=30, what="team-b's vmodel")
            assert a.target_model_id.startswith("team-a__example__isvc-")
            assert b.target_model_id.startswith("team-b__example__isvc-")
            assert a.target_model_id != b.target_model_id
            model = await stub.GetModelStatus(pb.GetModelStatusRequest(model_id=a.target_model_id), timeout=5)
            assert model.status != pb.NOT_FOUND

            # runtime pods and routers per namespace; the namespaced SR wins in team-a only
            dep_a = await eventually(lambda: kube.get(deployment("team-a", "modelmesh-serving-mlserver-1.x")),
                                     within=30, what="team-a's runtime Deployment")
            dep_b = await eventually(lambda: kube.get(deployment("team-b", "modelmesh-serving-mlserver-1.x")),
                                     within=30, what="team-b's runtime Deployment")
            assert env_of(dep_a, "puller")["MESHSERVE_PULLER_RUNTIME"] == "team-a__mlserver-1.x"
            assert env_of(dep_b, "puller")["MESHSERVE_PULLER_RUNTIME"] == "team-b__mlserver-1.x"
            assert env_of(dep_a, "puller")["MESHSERVE_PULLER_SCHEDULER_ADDRESS"] == f"meshserve-scheduler.{NAMESPACE}:8034"
            images = {ns: d["spec"]["template"]["spec"]["containers"][0]["image"] for ns, d in (("a", dep_a), ("b", dep_b))}
            assert images["a"] == "example.com/custom-mlserver:1" and images["b"] != images["a"]
            claims = {ns: {v["persistentVolumeClaim"]["claimName"] for v in d["spec"]["template"]["spec"]["volumes"]
                           if "persistentVolumeClaim" in v} for ns, d in (("a", dep_a), ("b", dep_b))}
            assert claims == {"a": {"team-a-claim"}, "b": set()}
            # Secrets are read by name only, never every Secret of the cluster
            secret_reads = [r for r in await kube.get("/_control/requests") if r["path"] == "/api/v1/secrets"]
            assert secret_reads and all(r["query"].get("fieldSelector") == "metadata.name=storage-config"
                                        for r in secret_reads), secret_reads
            for ns in ("team-a", "team-b"):
                router = await eventually(lambda ns=ns: kube.get(deployment(ns, "modelmesh-serving")),  # type: ignore[misc]
                                          within=30, what=f"{ns}'s router")
                assert env_of(router, "router")["MESHSERVE_ROUTER_NAMESPACE"] == ns
                svc = await eventually(lambda ns=ns: kube.get(f"{ns_path(ns)}/services/modelmesh-serving"),  # type: ignore[misc]
                                       within=30, what=f"{ns}'s Service")
                assert svc["spec"]["clusterIP"] == "None"
                # its disruption budget, owned by (garbage-collected with) the router Deployment
                pdb = await eventually(
                    lambda ns=ns: kube.get(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/modelmesh-serving"),  # type: ignore[misc]
                    within=30, what=f"{ns}'s router PodDisruptionBudget")
                (owner,) = pdb["metadata"]["ownerReferences"]
                assert (owner["kind"], owner["name"], owner["uid"]) == ("Deployment", "modelmesh-serving", router["metadata"]["uid"])
                assert pdb["spec"]["maxUnavailable"] == 1
                assert pdb["spec"]["selector"]["matchLabels"].items() <= router["spec"]["template"]["metadata"]["labels"].items()

            # a name that fits Kubernetes but not the scheduler once prefixed: InvalidSpec, named
            long_name = ".".join(["n" * 60] * 4)     # 243 characters, a valid RFC 1123 subdomain
            await kube.apply(isvcs("team-a"), isvc(long_name))

            async def refused() -> Any:
                got = await kube.get(f"{isvcs('team-a')}/{long_name}")
                status = ((got or {}).get("status") or {}).get("modelStatus") or {}
                return status if status.get("transitionStatus") == "InvalidSpec" else None
            status = await eventually(refused, within=30, what="the over-long id refused as InvalidSpec")
            assert "253" in status["lastFailureInfo"]["message"], status

            # team-c: ignored while unlabelled
            assert await vmodel(stub, "team-c__example") is None
            assert await kube.get(deployment("team-c", "modelmesh-serving")) is None
            c_isvc = await kube.get(f"{isvcs('team-c')}/example")
            assert not c_isvc["metadata"].get("finalizers") and not c_isvc.get("status", {}).get("modelStatus")

            # labelled later: served
            await label(kube, "team-c", "true")
            await eventually(lambda: vmodel(stub, "team-c__example"), within=30, what="team-c's vmodel once labelled")
            await eventually(lambda: kube.get(deployment("team-c", "modelmesh-serving")), within=30,
                             what="team-c's router once labelled")

            # label removed: its pods and router go, its registration stays
            await label(kube, "team-b", None)

            async def team_b_emptied() -> bool:
                return (await kube.get(deployment("team-b", "modelmesh-serving-mlserver-1.x")) is None
                        and await kube.get(deployment("team-b", "modelmesh-serving")) is None
                        and await kube.get(f"{ns_path('team-b')}/services/modelmesh-serving") is None
                        and await kube.get("/apis/policy/v1/namespaces/team-b/poddisruptionbudgets/modelmesh-serving") is None)
            await eventually(team_b_emptied, within=30, what="team-b's runtime Deployment and router deleted")
            assert await vmodel(stub, "team-b__example") is not None
            assert await kube.get(deployment("team-a", "modelmesh-serving-mlserver-1.x")) is not None

            # a delete in the no-longer-served namespace still goes through (our finalizer)
            await kube.request("DELETE", f"{isvcs('team-b')}/example")

            async def b_gone() -> bool:
                return await kube.get(f"{isvcs('team-b')}/example") is None and await vmodel(stub, "team-b__example") is None
            await eventually(b_gone, within=30, what="team-b's ISVC deleted and unregistered")

        # deleted while the controller is down: unregistered when it returns
        await kube.request("DELETE", f"{isvcs('team-a')}/example")
        marked = await kube.get(f"{isvcs('team-a')}/example")
        assert marked["metadata"].get("deletionTimestamp") and FINALIZER in marked["metadata"]["finalizers"]
        assert await vmodel(stub, "team-a__example") is not None
        async with cluster_controller(kube, real_scheduler):
            async def a_gone() -> bool:
                return await kube.get(f"{isvcs('team-a')}/example") is None and await vmodel(stub, "team-a__example") is None
            await eventually(a_gone, within=30, what="team-a's ISVC unregistered after the restart")
            assert await vmodel(stub, "team-c__example") is not None
    finally:
        await channel.close()


async def test_namespace_scope_ignores_other_namespaces_and_keeps_unprefixed_ids(fakekube: FakeKube, real_scheduler: str) -> None:
    """Namespace scope (the default) with the same objects: only the controller's namespace,
    ids as before (no prefix), one router there."""
    kube = fakekube
    for ns in (NAMESPACE, "team-a"):
        await kube.apply("/api/v1/namespaces", {"metadata": {"name": ns, "labels": {"modelmesh-enabled": "true"}}})
    csr = copy.deepcopy(serving_runtime())
    csr["kind"] = "ClusterServingRuntime"
    await kube.apply(CSRS, csr)
    for ns in (NAMESPACE, "team-a"):
        await kube.apply(isvcs(ns), isvc("example"))
    api_client = await api_client_from(str(kube.kubeconfig))
    channel = grpc.aio.insecure_channel(real_scheduler)
    api = KubeApi(api_client, request_timeout=5)
    reconciler = Reconciler(
        api=api, scheduler=GrpcScheduler(channel, timeout=5), namespace=NAMESPACE,
        config_map_name="model-serving-config", scheduler_address="meshserve-scheduler:8034", watch_timeout_seconds=30,
        finalizer=FINALIZER, router=RouterOptions(image="meshserve/router:test", replicas=1),
    )
    task = asyncio.create_task(reconciler.run())
    stub = pbg.SchedulerStub(channel)
    try:
        info = await eventually(lambda: vmodel(stub, "example"), within=30, what="the unprefixed vmodel")
        assert info.target_model_id.startswith("example__isvc-")
        router = await eventually(lambda: kube.get(deployment(NAMESPACE, "modelmesh-serving")), within=30, what="router")
        assert "MESHSERVE_ROUTER_NAMESPACE" not in env_of(router, "router")
        assert await vmodel(stub, "team-a__example") is None
        assert await kube.get(deployment("team-a", "modelmesh-serving")) is None
    finally:
        reconciler.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.close()
        await api_client.close()
