"""Schemas of the built-in kinds the fake serves (Deployment, ConfigMap, Secret, Event, Namespace,
HorizontalPodAutoscaler, Pod, PodDisruptionBudget).

The API server validates built-in objects with compiled Go types and hand-written validation;
the closest offline stand-in is the Kubernetes OpenAPI schemas that `kubernetes-validate`
ships (the "strict" variant: unknown fields are refused). So the fake is stricter than the real
server in one way, on purpose: a field the real server would prune with a warning is a 422 here
(for the controller's writes, a pruned field is a setting silently lost).

One jsonschema validator per kind, compiled on first use (jsonschema is imported then too: it
is slow to import, and the fake must answer /version soon after it starts). When
`kubernetes-validate` is not installed `BuiltinSchemas.errors` finds nothing (the fake still
runs, with CRD schemas only).
"""

from __future__ import annotations

import importlib.util
import json
from importlib import resources
from typing import Any

from fake_schema import FieldError

K8S_VERSION = "1.32"


class BuiltinSchemas:
    def __init__(self, version: str = K8S_VERSION) -> None:
        self.version = version
        self._validators: dict[tuple[str, str], Any] = {}
        self._registry: Any = None
        self.available = importlib.util.find_spec("kubernetes_validate") is not None

    def _load(self, name: str) -> Any:
        root = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{self.version}.0-local-strict"
        return json.loads((root / name).read_text())

    def _validator(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        if key not in self._validators:
            import jsonschema
            from referencing import Registry, Resource
            if self._registry is None:
                self._registry = Resource.from_contents(self._load("_definitions.json")) @ Registry()
            group_version = api_version.replace("/", "-")
            schema = self._load(f"{kind.lower()}-{group_version}.json")
            self._validators[key] = jsonschema.validators.Draft202012Validator(
                schema, registry=Resource.from_contents(schema) @ self._registry)
        return self._validators[key]

    def errors(self, obj: dict[str, Any]) -> list[FieldError]:
        if not self.available:
            return []
        validator = self._validator(str(obj.get("apiVersion")), str(obj.get("kind")))
        found: list[FieldError] = []
        for err in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
            path = ""
            for part in err.absolute_path:
                path = f"{path}[{part}]" if isinstance(part, int) else (f"{path}.{part}" if path else str(part))
            if err.validator == "required":
                missing = err.message.split("'")[1] if "'" in err.message else ""
                found.append(FieldError(f"{path}.{missing}" if path else missing, "FieldValueRequired", "Required value"))
            elif err.validator == "additionalProperties":
                found.append(FieldError(path or "<root>", "FieldValueInvalid", f"Invalid value: unknown field: {err.message}"))
            else:
                found.append(FieldError(path or "<root>", "FieldValueInvalid", f"Invalid value: {err.message}"))
        return found
