"""Validate custom resources against a CRD's openAPIV3Schema, the way a strict API server would.

Pure: takes parsed YAML (dicts), returns error strings. Used by the manifest tests and by local
mode (`meshserve apply -f`), where no API server checks the objects. The CRDs themselves ship
in `crds/` (copies of `deploy/kustomize/base/crd`, kept equal by a test): `packaged_crds()`.

The API server *prunes* unknown fields; `kubectl apply --validate=strict` rejects them. We follow
the strict behaviour: every object schema that lists `properties` and neither sets
`additionalProperties` nor `x-kubernetes-preserve-unknown-fields: true` rejects unknown keys.
`x-kubernetes-int-or-string` becomes "integer or string". `metadata` is checked only for
`name` (required, a string) because the API server owns its schema.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

JSON = dict[str, Any]


def to_json_schema(schema: Mapping[str, Any]) -> JSON:
    """Return a JSON-Schema (draft 7) equivalent of a structural openAPIV3Schema."""
    out: JSON = copy.deepcopy(dict(schema))
    _strictify(out)
    return out


def _strictify(node: JSON) -> None:
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = bool(node.pop("x-kubernetes-preserve-unknown-fields", False))
    for key in [k for k in node if k.startswith("x-kubernetes-")]:
        node.pop(key)
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    props = node.get("properties")
    if isinstance(props, dict):
        for child in props.values():
            _strictify(child)
        if not preserve and "additionalProperties" not in node:
            node["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        child = node.get(key)
        if isinstance(child, dict):
            _strictify(child)
    for key in ("anyOf", "allOf", "oneOf"):
        for child in node.get(key, []) or []:
            if isinstance(child, dict):
                _strictify(child)


def crd_key(crd: Mapping[str, Any]) -> tuple[str, str]:
    """(group, kind) served by a CRD."""
    spec = crd["spec"]
    return spec["group"], spec["names"]["kind"]


def version_schema(crd: Mapping[str, Any], version: str) -> JSON | None:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version and entry.get("served", True):
            return to_json_schema(entry["schema"]["openAPIV3Schema"])
    return None


def validate_custom_resource(obj: Mapping[str, Any], crd: Mapping[str, Any]) -> list[str]:
    """Errors (empty when valid) of `obj` against the CRD it claims to be an instance of."""
    api_version = str(obj.get("apiVersion", ""))
    group, _, version = api_version.rpartition("/")
    errors: list[str] = []
    crd_group, crd_kind = crd_key(crd)
    if group != crd_group or obj.get("kind") != crd_kind:
        return [f"object is {api_version} {obj.get('kind')}, CRD serves {crd_group} {crd_kind}"]
    schema = version_schema(crd, version)
    if schema is None:
        return [f"version {version!r} is not served by CRD {crd['metadata']['name']}"]
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        errors.append("metadata.name: required")
    scope = crd["spec"].get("scope", "Namespaced")
    if scope == "Cluster" and isinstance(metadata, Mapping) and metadata.get("namespace"):
        errors.append(f"metadata.namespace: {crd_kind} is cluster-scoped and takes no namespace")
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    for err in sorted(validator.iter_errors(dict(obj)), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in err.absolute_path) or "<root>"
        errors.append(f"{path}: {err.message}")
    return errors


CRDS_PACKAGE_DIR = Path(__file__).resolve().parent / "crds"
"""Copies of `deploy/kustomize/base/crd/*.yaml`, shipped with the package (a unit test keeps them equal)."""


@functools.cache
def _packaged() -> tuple[tuple[tuple[str, str], JSON], ...]:
    out = []
    for path in sorted(CRDS_PACKAGE_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                out.append((crd_key(doc), doc))
    return tuple(out)


def packaged_crds() -> dict[tuple[str, str], JSON]:
    """(group, kind) -> CRD for every CRD shipped in `meshserve/controller/crds/` (deep copies)."""
    return {key: copy.deepcopy(doc) for key, doc in _packaged()}


def validate_document(obj: Mapping[str, Any], crds: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> list[str]:
    """Schema errors of one document whose kind has a CRD here; [] for kinds without one.

    A kind a CRD here serves, under an apiVersion of another group (or none, or not a
    string), is an error too: it would otherwise skip the schema altogether. Any document,
    of any kind, holding what JSON cannot (`json_problems`) gets those errors alone: the API
    server and the local store take JSON."""
    problems = json_problems(obj)
    if problems:
        return problems
    crds = packaged_crds() if crds is None else crds
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    group = api_version.rpartition("/")[0] if isinstance(api_version, str) else ""
    crd = crds.get((group, str(kind)))
    if crd is not None and isinstance(api_version, str):
        return validate_custom_resource(obj, crd)
    served = sorted(
        f"{g}/{v['name']}" for (g, k), c in crds.items() if k == kind for v in c["spec"]["versions"] if v.get("served", True)
    )
    if served:
        return [f"apiVersion: {api_version!r} does not serve {kind}; use {' or '.join(served)}"]
    return []


def json_problems(obj: Any, path: str = "") -> list[str]:
    """Where a parsed YAML document holds what JSON (and so the API server and the local
    store) cannot: a date or timestamp, a non-string map key, NaN or infinity, binary or a
    set. Each message names the path and says to quote the value."""
    here = path or "<root>"
    if isinstance(obj, Mapping):
        out: list[str] = []
        for key, value in obj.items():
            if not isinstance(key, str):
                out.append(f"{here}: the key {key!r} is not a string; quote it")
                continue
            out += json_problems(value, f"{path}.{key}" if path else key)
        return out
    if isinstance(obj, list):
        return [p for i, item in enumerate(obj) for p in json_problems(item, f"{path}[{i}]")]
    if obj is None or isinstance(obj, str | bool | int):
        return []
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [f"{here}: {obj!r} is not a JSON number"]
    return [f"{here}: a {type(obj).__name__} value ({str(obj)[:40]!r}) is not JSON; quote it to make it a string"]
