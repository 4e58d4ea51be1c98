"""Every `ServingConfig` field is either consumed by code outside serving_config.py or listed here
as "parsed, not applied yet" or "not applicable" (an upstream key that means nothing in meshserve,
named in a warning when set), and docs/config-keys.md says the same: neither can drift silently.

"Consumed" is found by reading the code (ast), not by trusting a list: an attribute access
`<x>.<field>` where `<x>` is known to be a ServingConfig -- a parameter or attribute annotated
or assigned as one (`config: ServingConfig`, `self.config = ServingConfig()`, `c = self.config`),
or a `ServingConfig(...)` call -- in any module that imports meshserve.controller.serving_config
(the services may not import each other, so the config reaches nothing else). A property or
method of ServingConfig counts as consuming the fields it reads when it is itself consumed.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from meshserve.controller import serving_config
from meshserve.controller.serving_config import (
    NOT_APPLICABLE,
    NOT_APPLIED_YET,
    SECTION_KEYS,
    TOP_LEVEL_KEYS,
    ServingConfig,
)

REPO = Path(__file__).resolve().parents[4]
SOURCE = Path(serving_config.__file__).resolve()
DOC = REPO / "docs" / "config-keys.md"

NOT_APPLIED: frozenset[str] = frozenset()
"""Fields that are parsed but that nothing consumes yet (docs/config-keys.md: "parsed, not applied yet")."""
NOT_APPLICABLE_FIELDS = frozenset({
    "metrics_disable_prometheus_operator_support",
    "rest_proxy_skip_verify",
})
"""Fields of upstream keys that mean nothing in meshserve (docs/config-keys.md: "not applicable"):
parsed (a bad value still refuses the update), never consumed."""

KEY_FIELDS = {
    "inferenceServiceName": "inference_service_name",
    "inferenceServicePort": "inference_service_port",
    "storageSecretName": "storage_secret_name",
    "podsPerRuntime": "pods_per_runtime",
    "headlessService": "headless_service",
    "tls.secretName": "tls_secret_name",
    "tls.clientAuth": "tls_client_auth",
    "enableAccessLogging": "enable_access_logging",
    "serviceAccountName": "service_account_name",
    "metrics.enabled": "metrics_enabled",
    "metrics.port": "metrics_port",
    "metrics.scheme": "metrics_scheme",
    "metrics.disablePrometheusOperatorSupport": "metrics_disable_prometheus_operator_support",
    "scaleToZero.enabled": "scale_to_zero_enabled",
    "scaleToZero.gracePeriodSeconds": "scale_to_zero_grace_period_seconds",
    "grpcMaxMessageSizeBytes": "grpc_max_message_size_bytes",
    "restProxy.enabled": "rest_proxy_enabled",
    "restProxy.port": "rest_proxy_port",
    "restProxy.skipVerify": "rest_proxy_skip_verify",
    "storageHelperImage": "storage_helper_image",
    "storageHelperResources": "storage_helper_resources",
    "builtInServerTypes": "built_in_server_types",
    "payloadProcessors": "payload_processors",
    "runtimePodLabels": "runtime_pod_labels",
    "runtimePodAnnotations": "runtime_pod_annotations",
    "imagePullSecrets": "image_pull_secrets",
    "allowAnyPVC": "allow_any_pvc",
}
"""model-serving-config key -> the ServingConfig field it sets."""


def _members() -> dict[str, set[str]]:
    """ServingConfig's properties/methods -> the fields they read."""
    tree = ast.parse(SOURCE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ServingConfig")
    return {
        n.name: {a.attr for a in ast.walk(n) if isinstance(a, ast.Attribute)
                 and isinstance(a.value, ast.Name) and a.value.id == "self"}
        for n in cls.body if isinstance(n, ast.FunctionDef)
    }


def _imports_serving_config(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "meshserve.controller.serving_config":
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "meshserve.controller" \
                and any(a.name == "serving_config" for a in node.names):
            return True
        if isinstance(node, ast.Import) and any(a.name == "meshserve.controller.serving_config" for a in node.names):
            return True
    return False


def _is_config_annotation(ann: ast.expr | None) -> bool:
    return ann is not None and re.search(r"\bServingConfig\b", ast.unparse(ann)) is not None


def _typed_receivers(tree: ast.Module) -> set[str]:
    """Source texts of expressions that are ServingConfigs in this module (to a fixed point)."""
    typed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                if _is_config_annotation(arg.annotation):
                    typed.add(arg.arg)
        elif isinstance(node, ast.AnnAssign) and _is_config_annotation(node.annotation):
            typed.add(ast.unparse(node.target))
    changed = True
    while changed:   # `c = self.config`, `self.config = ServingConfig()`, `config = update.config`
        changed = False
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign):
                continue
            value = node.value
            makes = isinstance(value, ast.Call) and ast.unparse(value.func).endswith("ServingConfig")
            copies = isinstance(value, ast.Call) and ast.unparse(value.func).endswith("replace") \
                and bool(value.args) and ast.unparse(value.args[0]) in typed
            from_update = isinstance(value, ast.Attribute) and value.attr == "config" \
                and ast.unparse(value.value) in {"update", "result"}   # next_config's / the parser's result
            if makes or copies or from_update or ast.unparse(value) in typed:
                for target in node.targets:
                    if ast.unparse(target) not in typed:
                        typed.add(ast.unparse(target))
                        changed = True
    return typed


def consumers(paths: Iterable[Path]) -> dict[str, list[str]]:
    """Field -> `path:line` of each consumption outside serving_config.py."""
    members = _members()
    fields = {f.name for f in dataclasses.fields(ServingConfig)}
    found: dict[str, list[str]] = {}
    for path in paths:
        if path.resolve() == SOURCE:
            continue
        tree = ast.parse(path.read_text())
        if not _imports_serving_config(tree):
            continue
        typed = _typed_receivers(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or node.attr not in fields | set(members):
                continue
            receiver = node.value
            is_config = ast.unparse(receiver) in typed or (
                isinstance(receiver, ast.Call) and ast.unparse(receiver.func).endswith("ServingConfig"))
            if not is_config:
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            for name in (members[node.attr] & fields) if node.attr in members else {node.attr}:
                found.setdefault(name, []).append(where)
    return found


def source_files() -> list[Path]:
    return [p for root in (REPO / "services", REPO / "libs") for p in root.glob("*/src/**/*.py")]


def drift(fields: Iterable[str], used: Mapping[str, list[str]], unconsumed: Iterable[str]) -> list[str]:
    """What disagrees between the fields consumed and those listed as unconsumed (`NOT_APPLIED`
    and `NOT_APPLICABLE_FIELDS`)."""
    listed = set(unconsumed)
    problems = [f"ServingConfig.{f} is neither consumed outside serving_config.py nor listed in "
                "NOT_APPLIED / NOT_APPLICABLE_FIELDS"
                for f in sorted(fields) if f not in used and f not in listed]
    problems += [f"ServingConfig.{f} is listed as not applied / not applicable but consumed at {used[f]}: "
                 "move it to honoured here, in serving_config.NOT_APPLIED_YET / NOT_APPLICABLE and in "
                 "docs/config-keys.md"
                 for f in sorted(listed) if f in used]
    return problems


def test_every_field_is_consumed_or_listed_as_not_applied_yet_or_not_applicable() -> None:
    fields = [f.name for f in dataclasses.fields(ServingConfig)]
    used = consumers(source_files())
    assert drift(fields, used, NOT_APPLIED | NOT_APPLICABLE_FIELDS) == []
    # the not-applicable list is not vacuous: without it, exactly its fields are reported
    assert drift(fields, used, NOT_APPLIED) == [
        f"ServingConfig.{f} is neither consumed outside serving_config.py nor listed in NOT_APPLIED / NOT_APPLICABLE_FIELDS"
        for f in sorted(NOT_APPLICABLE_FIELDS)
    ]


def test_the_consumer_search_finds_real_uses_and_only_config_ones() -> None:
    used = consumers(source_files())
    # a few uses that are known to exist (deployments.py builds the runtime pods from the config)
    assert any("deployments.py" in w for w in used["storage_helper_image"])
    assert any("reconcile.py" in w for w in used["pods_per_runtime"])
    # the router's, scheduler's and puller's own `settings.metrics_port` are not the config's
    assert all("controller" in w for w in used["metrics_port"]), used["metrics_port"]


def test_drift_is_reported_both_ways() -> None:
    problems = drift(["a", "b", "c"], {"a": ["x.py:1"], "c": ["y.py:2"]}, ["c"])
    assert problems == [
        "ServingConfig.b is neither consumed outside serving_config.py nor listed in NOT_APPLIED / NOT_APPLICABLE_FIELDS",
        "ServingConfig.c is listed as not applied / not applicable but consumed at ['y.py:2']: move it to honoured "
        "here, in serving_config.NOT_APPLIED_YET / NOT_APPLICABLE and in docs/config-keys.md",
    ]


def test_every_field_has_its_key_and_the_parser_warns_for_exactly_the_unapplied_ones() -> None:
    assert sorted(KEY_FIELDS.values()) == sorted(f.name for f in dataclasses.fields(ServingConfig))
    assert {KEY_FIELDS[k] for k in NOT_APPLIED_YET} == NOT_APPLIED
    assert {KEY_FIELDS[k] for k in NOT_APPLICABLE if k in KEY_FIELDS} == NOT_APPLICABLE_FIELDS
    assert not NOT_APPLIED & NOT_APPLICABLE_FIELDS


# --- the doc -----------------------------------------------------------------------------------

STATUSES = ("honoured", "partly honoured", "refused with a message", "parsed, not applied yet", "not applicable")


def doc_rows() -> dict[str, str]:
    """`key` -> status, from the doc's table rows `| `key` | status | ... |`."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*([^|]+?)\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


DOC_SECTIONS = ("tls", "metrics", "scaleToZero", "restProxy")
"""Sections whose fields upstream documents as keys of their own (`tls.secretName`, ...)."""


def upstream_keys() -> set[str]:
    return ({k for k in TOP_LEVEL_KEYS if k not in DOC_SECTIONS}
            | {f"{s}.{f}" for s in DOC_SECTIONS for f in SECTION_KEYS[s]})


def test_the_doc_lists_every_upstream_key_once_with_a_known_status() -> None:
    rows = doc_rows()
    assert upstream_keys() - set(rows) == set(), "keys missing from docs/config-keys.md"
    assert set(rows) - upstream_keys() == set(), "docs/config-keys.md lists keys upstream does not have"
    assert {k: s for k, s in rows.items() if s not in STATUSES} == {}


def test_the_doc_agrees_with_the_code() -> None:
    rows = doc_rows()
    assert {k for k, s in rows.items() if s == "parsed, not applied yet"} == set(NOT_APPLIED_YET)
    assert {k for k, s in rows.items() if s == "not applicable"} == set(NOT_APPLICABLE)
    used = consumers(source_files())
    for key, status in rows.items():
        if status in ("honoured", "partly honoured") and key in KEY_FIELDS:
            assert KEY_FIELDS[key] in used, f"{key} is documented as {status} but nothing consumes it"


SAMPLES = {
    "metrics.disablePrometheusOperatorSupport": "metrics:\n  disablePrometheusOperatorSupport: true",
    "restProxy.skipVerify": "restProxy:\n  skipVerify: true",
}
"""A config setting each parsed-but-unconsumed key (NOT_APPLIED_YET and the NOT_APPLICABLE fields)."""


@pytest.mark.parametrize("key", sorted({*NOT_APPLIED_YET, *(k for k in NOT_APPLICABLE if k in KEY_FIELDS)}))
def test_each_unapplied_or_inapplicable_key_is_named_when_set(key: str) -> None:
    assert set(SAMPLES) == set(NOT_APPLIED_YET) | {k for k in NOT_APPLICABLE if k in KEY_FIELDS}
    warnings = serving_config.parse_config_yaml(SAMPLES[key]).warnings
    said = "is not applied yet: " if key in NOT_APPLIED_YET else "has no effect in meshserve: "
    assert [w for w in warnings if w.startswith(f"config key {key!r} ")] == [
        f"config key {key!r} {said}{({**NOT_APPLIED_YET, **NOT_APPLICABLE})[key]}"
    ], warnings


def test_the_inapplicable_keys_are_still_type_checked() -> None:
    with pytest.raises(serving_config.ConfigError, match=r"restProxy\.skipVerify: expected true or false"):
        serving_config.parse_config_yaml("restProxy:\n  skipVerify: sometimes")
    with pytest.raises(serving_config.ConfigError, match=r"metrics\.disablePrometheusOperatorSupport"):
        serving_config.parse_config_yaml("metrics:\n  disablePrometheusOperatorSupport: 3")


def test_metrics_scheme_is_honoured_without_a_warning_whatever_its_value() -> None:
    """metrics.scheme is applied to the runtime pods' pullers and to the routers
    (test_metrics_scheme.py, test_router_deployment.py): no value of it warns."""
    for text in ("metrics:\n  scheme: http", "metrics:\n  scheme: HTTPS", "metrics:\n  port: 2112"):
        assert serving_config.parse_config_yaml(text).warnings == (), text


def test_client_auth_optional_is_named_as_partly_honoured_and_require_is_not() -> None:
    optional = serving_config.parse_config_yaml("tls:\n  secretName: t\n  clientAuth: optional").warnings
    assert any(w.startswith("config key 'tls.clientAuth': optional is honoured only in part: ") for w in optional)
    assert serving_config.parse_config_yaml("tls:\n  secretName: t\n  clientAuth: require").warnings == ()
