"""Fuzzing the YAML apply path with mutated CRs (hypothesis, seeds: the example CRs in examples/
and the edge cases in corpus/crs/).

The path, as `meshserve apply -f` and local mode take it:
1. `meshserve.cli.resources.load_documents`: YAML text -> documents; the only error is
   `LoadError` ("<file>: not valid YAML: ...");
2. `meshserve.cli.resources.validate`: a document -> the list of its errors (kind, name, the
   CRD schema, the runtime webhook rules, the serving config); never an exception; a document
   it passes is sent to the store as JSON, so it must be JSON;
3. the controller reads what the store holds: `specs.parse_inference_service` /
   `specs.parse_predictor` turn any CR body into a `PredictorCR`, valid or with an error
   message (InvalidSpec), never an exception; `crdschema.validate_document` returns messages.

Pure functions, no stack: each test runs hundreds of examples in seconds, deterministically
(`derandomize=True`, no example database).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshserve.cli.resources import Document, LoadError, load_documents, validate
from meshserve.controller import crdschema, specs

from .mutations import CORPUS, JSON_VALUES, mutated_bytes, mutated_document

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(
    max_examples=300, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seed_texts() -> list[str]:
    paths = sorted((ROOT / "examples").rglob("*.yaml")) + sorted((CORPUS / "crs").glob("*.yaml"))
    return [p.read_text() for p in paths]


SEED_TEXTS = _seed_texts()
SEED_DOCS = [doc for text in SEED_TEXTS for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
CR_DOCS = [d for d in SEED_DOCS if d.get("kind") in ("InferenceService", "Predictor", "ServingRuntime", "ClusterServingRuntime")]

YAML_VALUES = st.one_of(
    JSON_VALUES,
    st.dates(), st.datetimes(),               # YAML timestamps load as date/datetime objects
    st.sampled_from((math.inf, -math.inf)),   # .inf
    st.binary(max_size=8),                    # !!binary
    st.sets(st.integers(0, 3), max_size=2),   # !!set
    st.dictionaries(st.integers() | st.booleans() | st.none(), st.text(max_size=4), max_size=2),  # non-string keys
)
"""Values a YAML document can hold that JSON cannot (plus every JSON value)."""


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _check_validate(doc: Document) -> list[str]:
    errors = validate(doc)  # must not raise
    assert isinstance(errors, list) and all(isinstance(e, str) and e.strip() for e in errors), errors
    if not errors:
        assert _is_json(doc.body), f"validate() passed a document the store cannot take as JSON: {doc.body!r}"
    return errors


def _load_text(text: str) -> list[Document] | None:
    try:
        return load_documents(["-"], stdin=io.StringIO(text))
    except LoadError as err:
        assert str(err).startswith("-: not valid YAML: "), err
        return None


def test_the_seeds_are_valid() -> None:
    # the fuzz mutates valid CRs: the examples themselves pass
    for text in SEED_TEXTS:
        docs = _load_text(text)
        assert docs is not None
        for doc in docs:
            if doc.kind != "Secret":  # another helper adds Secret support to the CLI
                assert _check_validate(doc) == [] or doc.kind not in ("InferenceService", "Predictor"), (doc.where(), validate(doc))


@FUZZ
@given(text=mutated_bytes([t.encode() for t in SEED_TEXTS], max_edits=3))
def test_mutated_yaml_text_is_loaded_or_refused_as_yaml(text: bytes) -> None:
    docs = _load_text(text.decode("utf-8", "replace"))
    for doc in docs or []:
        _check_validate(doc)


@FUZZ
@given(body=mutated_document(SEED_DOCS, max_edits=4, values=YAML_VALUES))
def test_mutated_documents_get_only_validation_messages(body: Any) -> None:
    # through YAML, as a user's file would be (values YAML cannot dump are left to the next test)
    try:
        text = yaml.safe_dump(body)
    except yaml.YAMLError:
        text = None
    if text is not None:
        for doc in _load_text(text) or []:
            _check_validate(doc)
    _check_validate(Document(source="fuzz.yaml", index=1, body=body))


def _check_controller(body: Any) -> None:
    if not isinstance(body, Mapping):
        return
    assert all(isinstance(e, str) for e in crdschema.validate_document(body))
    for parse in (specs.parse_inference_service, specs.parse_predictor):
        cr = parse(body)  # must not raise
        if cr is not None:
            assert cr.valid or (isinstance(cr.error, str) and cr.error.strip()), cr
            assert cr.model_id


@FUZZ
@given(body=mutated_document(CR_DOCS, max_edits=4))
def test_the_controller_parses_any_stored_cr_without_raising(body: Any) -> None:
    # what local mode's store may hold (the scheduler's /v1/resources takes JSON objects): JSON only
    _check_controller(body)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor",
                      "metadata": {"name": "p", "generation": "two"}, "spec": {"modelType": {"name": "sklearn"}, "path": "p"}},
                     id="generation-not-a-number"),
        pytest.param({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                      "metadata": {"name": "i", "annotations": {specs.DEPLOYMENT_MODE_ANNOTATION: specs.MODELMESH_MODE}},
                      "spec": ["not", "a", "map"]}, id="isvc-spec-a-list"),
    ],
)
def test_controller_corner_cases(body: dict[str, Any]) -> None:
    _check_controller(body)


ISVC = """apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: isvc
  annotations:
    serving.kserve.io/deploymentMode: ModelMesh
spec:
  predictor:
    model:
      modelFormat: {name: sklearn}
      storageUri: s3://bucket/model
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(ISVC.replace("serving.kserve.io/v1beta1", "v1"), "apiVersion: 'v1' does not serve InferenceService; use serving.kserve.io/v1beta1", id="wrong-api-version"),
        pytest.param(ISVC.replace("apiVersion: serving.kserve.io/v1beta1\n", ""), "apiVersion: '' does not serve InferenceService", id="no-api-version"),
        pytest.param(ISVC.replace("ModelMesh\n", "ModelMesh\n    created: 2026-12-03\n"), "metadata.annotations.created: a date value ('2026-12-03') is not JSON; quote it", id="date-annotation"),
        pytest.param(ISVC.replace("ModelMesh\n", "ModelMesh\n    1: one\n"), "metadata.annotations: the key 1 is not a string; quote it", id="int-key"),
        pytest.param(ISVC.replace("  name: isvc\n", "  name: isvc\n  labels: {weight: .inf}\n"), "metadata.labels.weight: inf is not a JSON number", id="infinity"),
    ],
)
def test_documents_json_cannot_hold_or_of_the_wrong_group_are_refused_clearly(text: str, message: str) -> None:
    docs = _load_text(text)
    assert docs is not None and len(docs) == 1
    errors = _check_validate(docs[0])
    assert any(e.startswith(message) for e in errors), errors
