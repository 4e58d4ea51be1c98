"""The CRDs shipped inside the package (`meshserve/controller/crds/`, used by `meshserve apply`
and local mode) are byte-for-byte the ones in `deploy/kustomize/base/crd/`."""

from __future__ import annotations

from pathlib import Path

from meshserve.controller import crdschema

REPO = Path(__file__).resolve().parents[4]
DEPLOY_CRDS = REPO / "deploy" / "kustomize" / "base" / "crd"


def test_packaged_crds_equal_the_deploy_ones() -> None:
    deploy = {p.name: p.read_bytes() for p in DEPLOY_CRDS.glob("*.yaml")}
    packaged = {p.name: p.read_bytes() for p in crdschema.CRDS_PACKAGE_DIR.glob("*.yaml")}
    assert deploy, "no CRDs under deploy/kustomize/base/crd"
    assert packaged == deploy, "run: cp deploy/kustomize/base/crd/*.yaml services/controller/src/meshserve/controller/crds/"


def test_packaged_crds_cover_every_kind_apply_validates() -> None:
    kinds = {kind for _, kind in crdschema.packaged_crds()}
    assert kinds == {"InferenceService", "Predictor", "ServingRuntime", "ClusterServingRuntime"}


def test_validate_document_uses_the_packaged_schema() -> None:
    good = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "m"}, "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
    }
    assert crdschema.validate_document(good) == []
    bad = {**good, "spec": {"predictor": {"model": {"modelFormat": {"name": 5}}}}}
    assert crdschema.validate_document(bad) == ["spec.predictor.model.modelFormat.name: 5 is not of type 'string'"]
    assert crdschema.validate_document({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}) == []
