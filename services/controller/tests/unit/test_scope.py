"""Cluster scope's ids (namespace prefix, pinning), served namespaces and addresses (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as stt

from meshserve.common.storage import check_model_id
from meshserve.controller import deployments, reconcile
from meshserve.controller.runtimes import parse_runtime
from meshserve.controller.scope import Scope, namespace_enabled, qualified_address, scheduler_model
from meshserve.controller.serving_config import ServingConfig
from meshserve.controller.specs import parse_inference_service
from meshserve.controller.storage_config import StorageConfig
from meshserve.controller.watched import owner_kind

HOME = "modelmesh-serving"
CLUSTER = Scope(home=HOME, cluster=True)
dns_label = stt.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)


def isvc(ns: str, name: str = "example", runtime: str = "") -> dict:
    model = {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p"}
    if runtime:
        model["runtime"] = runtime
    return {"metadata": {"name": name, "namespace": ns, "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
            "spec": {"predictor": {"model": model}}}


def test_namespace_scope_ids_are_unchanged() -> None:
    cr = parse_inference_service(isvc(HOME))
    assert cr is not None
    got = scheduler_model(cr, scope=Scope(home=HOME), supporting=("mlserver-1.x",))
    assert (got.vmodel_id, got.model_id, got.spec) == (cr.vmodel_id, cr.model_id, cr.spec)


def test_cluster_scope_prefixes_every_id_and_pins_the_runtime() -> None:
    a, b = (parse_inference_service(isvc(ns)) for ns in ("team-a", "team-b"))
    assert a is not None and b is not None
    ga, gb = (scheduler_model(cr, scope=CLUSTER, supporting=("mlserver-1.x", "other")) for cr in (a, b))
    assert ga.vmodel_id == "team-a__example" and gb.vmodel_id == "team-b__example"
    assert ga.model_id.startswith("team-a__example__isvc-") and gb.model_id.startswith("team-b__example__isvc-")
    assert ga.model_id != gb.model_id and len({ga.vmodel_id, gb.vmodel_id}) == 2
    assert ga.spec is not None and ga.spec.runtime == "team-a__mlserver-1.x"
    assert ga.spec.labels() == frozenset({"rt:team-a__mlserver-1.x"})
    named = parse_inference_service(isvc("team-a", runtime="other"))
    assert named is not None
    pinned = scheduler_model(named, scope=CLUSTER, supporting=("other",))
    assert pinned.spec is not None and pinned.spec.runtime == "team-a__other"


def test_a_model_moved_to_another_runtime_gets_a_new_id() -> None:
    cr = parse_inference_service(isvc("team-a"))
    assert cr is not None
    one = scheduler_model(cr, scope=CLUSTER, supporting=("b-runtime",))
    two = scheduler_model(cr, scope=CLUSTER, supporting=("a-runtime", "b-runtime"))
    assert one.model_id != two.model_id


@given(ns=dns_label, name=dns_label)
def test_ids_split_back_and_the_scheduler_accepts_them(ns: str, name: str) -> None:
    cr = parse_inference_service(isvc(ns, name))
    assert cr is not None
    got = scheduler_model(cr, scope=CLUSTER, supporting=("mlserver-1.x",))
    check_model_id(got.model_id)       # the scheduler's id validation
    assert CLUSTER.split(got.vmodel_id) == (ns, name)
    split_ns, rest = CLUSTER.split(got.model_id)
    assert split_ns == ns and owner_kind(rest) == ("InferenceService", name)


def test_split_refuses_ids_without_a_namespace() -> None:
    assert CLUSTER.split("plain") == ("", "plain")
    assert Scope(home=HOME).split("a__b") == (HOME, "a__b")


def test_served_namespaces() -> None:
    labelled = {"metadata": {"name": "team-a", "labels": {"modelmesh-enabled": "true"}}}
    assert namespace_enabled(labelled) and not namespace_enabled({"metadata": {"labels": {"modelmesh-enabled": "false"}}})
    assert CLUSTER.served(HOME, None) and CLUSTER.served("team-a", labelled)
    assert not CLUSTER.served("team-b", {"metadata": {"name": "team-b"}})
    assert not Scope(home=HOME).served("team-a", labelled)     # namespace scope: its own only


@pytest.mark.parametrize(("address", "client", "expected"), [
    ("meshserve-scheduler:8034", HOME, "meshserve-scheduler:8034"),
    ("meshserve-scheduler:8034", "team-a", f"meshserve-scheduler.{HOME}:8034"),
    ("scheduler.other.svc:8034", "team-a", "scheduler.other.svc:8034"),
    ("10.0.0.7:8034", "team-a", "10.0.0.7:8034"),
    ("localhost:8034", "team-a", "localhost:8034"),
])
def test_qualified_address(address: str, client: str, expected: str) -> None:
    assert qualified_address(address, service_namespace=HOME, client_namespace=client) == expected


def test_runtime_pods_register_with_the_prefixed_name_and_only_the_pinned_runtime_is_used() -> None:
    spec = {"multiModel": True, "supportedModelFormats": [{"name": "sklearn", "autoSelect": True}],
            "protocolVersions": ["grpc-v2"], "builtInAdapter": {"serverType": "mlserver"},
            "containers": [{"name": "mlserver", "image": "m", "resources": {"requests": {"memory": "1Gi"}}}]}
    runtimes = {n: parse_runtime({"metadata": {"name": n}, "spec": spec}, cluster_scoped=True) for n in ("rt-a", "rt-b")}
    cr = parse_inference_service(isvc("team-a"))
    assert cr is not None
    plan = reconcile.plan_runtimes(
        runtimes=runtimes, predictors=[cr], observed={}, records={}, config=ServingConfig(), namespace="team-a",
        storage=StorageConfig(), scheduler_address="s:1", now=0.0, runtime_prefix="team-a__",
    )
    created = {a.runtime: a for a in plan.actions}
    assert set(created) == {"rt-a"}                      # rt-b supports it too, but it is pinned to rt-a
    puller = created["rt-a"].manifest["spec"]["template"]["spec"]["containers"][-1]   # type: ignore[index]
    assert {"name": "MESHSERVE_PULLER_RUNTIME", "value": "team-a__rt-a"} in puller["env"]
    unscoped = reconcile.plan_runtimes(
        runtimes=runtimes, predictors=[cr], observed={}, records={}, config=ServingConfig(), namespace=HOME,
        storage=StorageConfig(), scheduler_address="s:1", now=0.0,
    )
    assert {a.runtime for a in unscoped.actions} == {"rt-a", "rt-b"}
    assert deployments.deployment_name(ServingConfig(), "rt-a") == "modelmesh-serving-rt-a"


def _runtime(annotations: dict[str, str]) -> object:
    spec = {"multiModel": True, "supportedModelFormats": [{"name": "sklearn", "autoSelect": True}],
            "builtInAdapter": {"serverType": "mlserver"}, "containers": [{"name": "mlserver", "image": "m"}]}
    return parse_runtime({"metadata": {"name": "rt", "annotations": annotations}, "spec": spec}, cluster_scoped=False)


def test_per_model_concurrency_limit_reaches_the_puller_and_a_bad_one_makes_the_runtime_invalid() -> None:
    from meshserve.controller.runtimes import validate_runtime
    rt = _runtime({"perModelConcurrencyLimit": "4"})
    manifest = deployments.build_runtime_deployment(runtime=rt, config=ServingConfig(), namespace=HOME, replicas=1,  # type: ignore[arg-type]
                                                    storage=StorageConfig(), scheduler_address="s:1")
    puller = manifest["spec"]["template"]["spec"]["containers"][-1]
    assert {"name": "LIMIT_PER_MODEL_CONCURRENCY", "value": "4"} in puller["env"]
    plain = deployments.build_runtime_deployment(runtime=_runtime({}), config=ServingConfig(), namespace=HOME,  # type: ignore[arg-type]
                                                 replicas=1, storage=StorageConfig(), scheduler_address="s:1")
    assert all(e["name"] != "LIMIT_PER_MODEL_CONCURRENCY" for e in plain["spec"]["template"]["spec"]["containers"][-1]["env"])
    errors = validate_runtime(_runtime({"perModelConcurrencyLimit": "many"}), built_in_server_types=["mlserver"])  # type: ignore[arg-type]
    assert any("perModelConcurrencyLimit" in e for e in errors)
