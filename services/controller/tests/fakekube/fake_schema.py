"""Structural OpenAPI v3 schemas of CustomResourceDefinitions, applied as the API server does.

One walk per write, in the API server's order: prune (drop fields the schema does not declare,
unless `x-kubernetes-preserve-unknown-fields: true`; drop `null` where the field is not
`nullable`), default (`default:` for every absent property, then its children), validate
(`type`, `x-kubernetes-int-or-string`, `nullable`, `required`, `enum`, `format` date-time/date,
`minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`, `pattern`, `anyOf` value
validations). `metadata` is the API server's own: neither pruned nor checked here.

Errors are `FieldError`s (`field`, `reason`, `message`) with the texts the real server puts in
a 422 `Status` (`details.causes`), e.g. `spec.x: Required value`,
`spec.x: Unsupported value: "a": supported values: "b", "c"`.

Only the standard library: `server.py` runs on its own, outside the package.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

Schema = dict[str, Any]


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str        # FieldValueRequired, FieldValueNotSupported, FieldValueTypeInvalid, FieldValueInvalid
    detail: str        # the message without the field, as in details.causes[].message

    @property
    def message(self) -> str:
        return f"{self.field}: {self.detail}"


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _has_type(value: Any, wanted: str) -> bool:
    got = _type_name(value)
    return got == wanted or (wanted == "number" and got == "integer")


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class StructuralSchema:
    """One version's `openAPIV3Schema`; `admit(obj)` returns (object as stored, errors, pruned paths)."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    def admit(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[FieldError], list[str]]:
        out = copy.deepcopy(obj)
        pruned: list[str] = []
        props = self.schema.get("properties") or {}
        for key in [k for k in out if k not in props and k not in ("apiVersion", "kind", "metadata")]:
            if not self.schema.get("x-kubernetes-preserve-unknown-fields"):
                pruned.append(key)
                del out[key]
        for key, sub in props.items():
            if key == "metadata":
                continue
            if key in out:
                if out[key] is None and not sub.get("nullable"):
                    del out[key]
                else:
                    out[key] = self._prune_default(out[key], sub, key, pruned)
            if key not in out and "default" in sub:
                out[key] = self._prune_default(copy.deepcopy(sub["default"]), sub, key, pruned)
        errors: list[FieldError] = []
        for key in self.schema.get("required") or []:
            if key not in out:
                errors.append(FieldError(key, "FieldValueRequired", "Required value"))
        for key, sub in props.items():
            if key != "metadata" and key in out:
                self._validate(out[key], sub, key, errors)
        return out, errors, pruned

    # --- prune + default ----------------------------------------------------------------------

    def _prune_default(self, value: Any, schema: Schema, path: str, pruned: list[str]) -> Any:
        if isinstance(value, dict) and (schema.get("type") == "object" or "properties" in schema or "additionalProperties" in schema):
            props = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
            for key in list(value):
                if key in props:
                    sub = props[key]
                elif isinstance(extra, dict):
                    sub = extra
                elif extra is True or preserve:
                    continue
                else:
                    pruned.append(_child(path, key))
                    del value[key]
                    continue
                if value[key] is None and not sub.get("nullable"):
                    del value[key]
                    continue
                value[key] = self._prune_default(value[key], sub, _child(path, key), pruned)
            for key, sub in props.items():
                if key not in value and "default" in sub:
                    value[key] = self._prune_default(copy.deepcopy(sub["default"]), sub, _child(path, key), pruned)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            items = schema["items"]
            value[:] = [self._prune_default(v, items, _child(path, i), pruned) for i, v in enumerate(value)]
        return value

    # --- validate -----------------------------------------------------------------------------

    def _validate(self, value: Any, schema: Schema, path: str, errors: list[FieldError]) -> None:
        if value is None and schema.get("nullable"):
            return
        if schema.get("x-kubernetes-int-or-string"):
            if not (_has_type(value, "integer") or isinstance(value, str)):
                errors.append(FieldError(path, "FieldValueTypeInvalid",
                                         f'Invalid value: "{_type_name(value)}": {path} in body must be of type integer,string: {_quote(value)}'))
                return
        else:
            wanted = schema.get("type")
            if wanted and not _has_type(value, wanted):
                errors.append(FieldError(path, "FieldValueTypeInvalid",
                                         f'Invalid value: "{_type_name(value)}": {path} in body must be of type {wanted}: {_quote(value)}'))
                return
        enum = schema.get("enum")
        if enum is not None and value not in enum:
            supported = ", ".join(_quote(v) for v in enum)
            errors.append(FieldError(path, "FieldValueNotSupported", f"Unsupported value: {_quote(value)}: supported values: {supported}"))
        self._value_checks(value, schema, path, errors)
        for alternative in ("anyOf",):
            options = schema.get(alternative)
            if options and not any(self._matches(value, o) for o in options):
                errors.append(FieldError(path, "FieldValueInvalid", f"Invalid value: {_quote(value)}: {path} in body must match anyOf"))
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            for key in schema.get("required") or []:
                if key not in value:
                    errors.append(FieldError(_child(path, key), "FieldValueRequired", "Required value"))
            extra = schema.get("additionalProperties")
            for key, sub_value in value.items():
                sub = props.get(key) or (extra if isinstance(extra, dict) else None)
                if sub is not None:
                    self._validate(sub_value, sub, _child(path, key), errors)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                self._validate(item, schema["items"], _child(path, i), errors)

    def _matches(self, value: Any, schema: Schema) -> bool:
        found: list[FieldError] = []
        self._validate(value, schema, "x", found)
        return not found

    @staticmethod
    def _value_checks(value: Any, schema: Schema, path: str, errors: list[FieldError]) -> None:
        def invalid(why: str) -> None:
            errors.append(FieldError(path, "FieldValueInvalid", f"Invalid value: {_quote(value)}: {path} in body {why}"))
        if isinstance(value, str):
            fmt = schema.get("format")
            if fmt == "date-time":
                try:
                    datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    invalid("must be of type date-time")
            elif fmt == "date":
                try:
                    date.fromisoformat(value)
                except ValueError:
                    invalid("must be of type date")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                invalid(f"should match '{schema['pattern']}'")
            if "minLength" in schema and len(value) < schema["minLength"]:
                invalid(f"should be at least {schema['minLength']} chars long")
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                invalid(f"may not be longer than {schema['maxLength']}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                invalid(f"should be greater than or equal to {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                invalid(f"should be less than or equal to {schema['maximum']}")
        if isinstance(value, list):
            if "minItems" in schema and len(value) < schema["minItems"]:
                invalid(f"should have at least {schema['minItems']} items")
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                invalid(f"should have at most {schema['maxItems']} items")


def structural_problems(schema: Schema, path: str = "") -> list[str]:
    """Why `schema` is not structural (empty when it is), as the API server refuses a CRD for:
    a node without a `type` (unless `x-kubernetes-int-or-string` or
    `x-kubernetes-preserve-unknown-fields`), `properties` with `additionalProperties`, or a
    `type`/`default`/`nullable`/`additionalProperties` inside `anyOf`/`allOf`/`oneOf`/`not`
    (besides the int-or-string pattern)."""
    here = path or "<root>"
    out: list[str] = []
    if not schema.get("type") and not schema.get("x-kubernetes-int-or-string") and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.append(f"{here}: type: Required value: must not be empty for specified object fields")
    if "properties" in schema and "additionalProperties" in schema:
        out.append(f"{here}: additionalProperties and properties are mutually exclusive")
    for key in ("anyOf", "allOf", "oneOf"):
        for i, branch in enumerate(schema.get(key) or []):
            int_or_string = bool(schema.get("x-kubernetes-int-or-string")) and set(branch) == {"type"}
            for banned in ("type", "default", "nullable", "additionalProperties"):
                if banned in branch and not (banned == "type" and int_or_string):
                    out.append(f"{here}.{key}[{i}].{banned}: Forbidden: must be empty to be structural")
    for key, sub in (schema.get("properties") or {}).items():
        out += structural_problems(sub, f"{path}.properties[{key}]" if path else f"properties[{key}]")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out += structural_problems(schema[key], f"{here}.{key}")
    return out


@dataclass(frozen=True)
class ServedKind:
    """What a CRD serves: one plural in one group, its versions' schemas, scope and subresources."""

    group: str
    kind: str
    plural: str
    namespaced: bool
    status_subresource: bool
    schemas: dict[str, StructuralSchema]   # version -> schema


def served_kind(crd: dict[str, Any]) -> ServedKind:
    spec = crd["spec"]
    versions = [v for v in spec["versions"] if v.get("served", True)]
    status = any("status" in (v.get("subresources") or spec.get("subresources") or {}) for v in versions)
    return ServedKind(
        group=spec["group"], kind=spec["names"]["kind"], plural=spec["names"]["plural"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced", status_subresource=status,
        schemas={v["name"]: StructuralSchema((v.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema") or {})
                 for v in versions},
    )
