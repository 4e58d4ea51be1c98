from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshserve.controller import runtimes as rts
from meshserve.controller.specs import ModelSpec

BASE = Path(__file__).resolve().parents[4] / "deploy" / "kustomize" / "base" / "runtimes"
TYPES = ("triton", "mlserver", "ovms", "torchserve")


def shipped() -> dict[str, rts.Runtime]:
    out = {}
    for path in BASE.glob("*.yaml"):
        rt = rts.parse_runtime(yaml.safe_load(path.read_text()), cluster_scoped=True)
        out[rt.name] = rt
    return out


def sr(name: str = "custom", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"supportedModelFormats": [{"name": "sklearn", "version": "0", "autoSelect": True}],
                            "multiModel": True, "protocolVersions": ["grpc-v2"],
                            "containers": [{"name": "server", "image": "x"}]}
    base.update(spec)
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
            "metadata": {"name": name, "namespace": "ns"}, "spec": base}


def test_shipped_runtimes_are_valid_and_labelled_like_upstream() -> None:
    all_rts = shipped()
    for rt in all_rts.values():
        assert rts.validate_runtime(rt, built_in_server_types=TYPES) == []
    ml = all_rts["mlserver-1.x"].labels()
    assert {"rt:mlserver-1.x", "mt:sklearn", "mt:sklearn:0", "mt:xgboost:1", "mt:lightgbm:3", "pv:grpc-v2", "pv:v2"} <= ml
    triton = all_rts["triton-2.x"].labels()
    assert "mt:onnx" in triton and "mt:sklearn" not in triton   # autoSelect false: no mt: label
    assert "mt:onnx" not in all_rts["ovms-1.x"].labels()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param(ModelSpec(model_type="sklearn"), ("mlserver-1.x",), id="sklearn-auto"),
        pytest.param(ModelSpec(model_type="sklearn", model_type_version="0"), ("mlserver-1.x",), id="sklearn-0"),
        pytest.param(ModelSpec(model_type="xgboost", runtime="triton-2.x"), ("triton-2.x",), id="explicit-triton"),
        pytest.param(ModelSpec(model_type="onnx"), ("triton-2.x",), id="onnx-auto-triton-only"),
        pytest.param(ModelSpec(model_type="openvino_ir"), ("ovms-1.x",), id="openvino"),
        pytest.param(ModelSpec(model_type="sklearn", protocol_version="grpc-v2"), ("mlserver-1.x",), id="pv"),
    ],
)
def test_selection(model: ModelSpec, expected: tuple[str, ...]) -> None:
    sel = rts.select_runtime(model, shipped(), built_in_server_types=TYPES)
    assert sel.runtimes == expected and sel.failure is None


@pytest.mark.parametrize(
    ("model", "failure", "message"),
    [
        pytest.param(ModelSpec(model_type="sklearn", runtime="nope"), rts.SelectionFailure.RUNTIME_NOT_RECOGNIZED,
                     "Specified runtime name not recognized", id="unknown-runtime"),
        pytest.param(ModelSpec(model_type="caffe"), rts.SelectionFailure.NO_SUPPORTING_RUNTIME,
                     "No ServingRuntime supports specified model type and/or protocol", id="unknown-format"),
        pytest.param(ModelSpec(model_type="sklearn", model_type_version="9"), rts.SelectionFailure.NO_SUPPORTING_RUNTIME,
                     "No ServingRuntime", id="unknown-version"),
        pytest.param(ModelSpec(model_type="sklearn", protocol_version="grpc-v1"), rts.SelectionFailure.NO_SUPPORTING_RUNTIME,
                     "No ServingRuntime", id="wrong-protocol"),
    ],
)
def test_selection_failures(model: ModelSpec, failure: rts.SelectionFailure, message: str) -> None:
    sel = rts.select_runtime(model, shipped(), built_in_server_types=TYPES)
    assert sel.runtime is None and sel.failure is failure and sel.message.startswith(message)


def test_disabled_and_non_multimodel_runtimes_are_excluded() -> None:
    model = ModelSpec(model_type="sklearn")
    for spec in ({"disabled": True}, {"multiModel": False}):
        runtimes = {"custom": rts.parse_runtime(sr(**spec), cluster_scoped=False)}
        assert rts.select_runtime(model, runtimes, built_in_server_types=TYPES).failure is rts.SelectionFailure.NO_SUPPORTING_RUNTIME
    runtimes = {"custom": rts.parse_runtime(sr(disabled=True), cluster_scoped=False)}
    assert rts.select_runtime(ModelSpec(model_type="sklearn", runtime="custom"), runtimes,
                              built_in_server_types=TYPES).failure is rts.SelectionFailure.RUNTIME_NOT_RECOGNIZED


def test_namespaced_runtime_overrides_cluster_runtime_of_same_name() -> None:
    cluster = list(shipped().values())
    override = rts.parse_runtime(sr("mlserver-1.x", disabled=True), cluster_scoped=False)
    eff = rts.effective_runtimes(namespaced=[override], cluster=cluster)
    assert eff["mlserver-1.x"] is override and not eff["mlserver-1.x"].cluster_scoped
    assert rts.select_runtime(ModelSpec(model_type="sklearn"), eff, built_in_server_types=TYPES).failure is not None
    assert eff["triton-2.x"].cluster_scoped


def _containers(**extra: Any) -> list[dict[str, Any]]:
    return [{"name": "server", "image": "x", **extra}]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        pytest.param({"containers": [{"name": "mm"}]}, "container name 'mm' is reserved", id="mm"),
        pytest.param({"containers": [{"name": "puller"}]}, "'puller' is reserved", id="puller"),
        pytest.param({"containers": [{"name": "mm-sidecar"}]}, "'mm-sidecar' is reserved", id="mm-prefix"),
        pytest.param({"containers": _containers(readinessProbe={"exec": {}})}, "readinessProbe", id="readiness"),
        pytest.param({"containers": _containers(lifecycle={})}, "lifecycle", id="lifecycle"),
        pytest.param({"containers": _containers(ports=[{"name": "grpc", "containerPort": 9000}])}, "port name 'grpc'", id="port-name"),
        pytest.param({"containers": _containers(ports=[{"name": "a", "containerPort": 8085}])}, "port 8085 is reserved", id="8085"),
        pytest.param({"containers": _containers(ports=[{"name": "a", "containerPort": 11890}])}, "port 11890", id="range"),
        pytest.param({"containers": _containers(volumeMounts=[{"name": "tc-config", "mountPath": "/x"}])}, "volume mount", id="mount"),
        pytest.param({"volumes": [{"name": "models-dir", "emptyDir": {}}]}, "volume name 'models-dir'", id="volume"),
        pytest.param({"builtInAdapter": {"serverType": "mlserver"}}, "must include runtime container with name mlserver", id="adapter-container"),
        pytest.param({"builtInAdapter": {"serverType": "seldon"}}, "serverType 'seldon'", id="adapter-type"),
        pytest.param({"grpcEndpoint": "8085"}, "grpcEndpoint", id="endpoint"),
        pytest.param({"containers": []}, "at least one container", id="no-containers"),
    ],
)
def test_validation_rules(spec: dict[str, Any], needle: str) -> None:
    rt = rts.parse_runtime(sr(**spec), cluster_scoped=False)
    errors = rts.validate_runtime(rt, built_in_server_types=TYPES)
    assert any(needle in e for e in errors), errors
    assert not rts.is_eligible(rt, built_in_server_types=TYPES)


def test_ports_outside_reserved_set_are_fine() -> None:
    rt = rts.parse_runtime(sr(containers=_containers(ports=[{"name": "data", "containerPort": 8001}]),
                              grpcEndpoint="unix:/tmp/x.sock"), cluster_scoped=False)
    assert rts.validate_runtime(rt, built_in_server_types=TYPES) == []


def test_parse_keeps_spec_and_adapter() -> None:
    raw = yaml.safe_load((BASE / "mlserver-1.x.yaml").read_text())
    rt = rts.parse_runtime(copy.deepcopy(raw), cluster_scoped=True)
    assert rt.built_in_adapter is not None and rt.built_in_adapter.mem_buffer_bytes == 134217728
    assert rt.namespace == "" and rt.kind == "ClusterServingRuntime"
    assert rt.spec["containers"][0]["name"] == "mlserver"
    assert rts.endpoint_port(rt.grpc_data_endpoint) == 8001
