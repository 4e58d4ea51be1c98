"""Runtime compatibility labels, as ModelMesh Serving computes them.

A model asks for `rt:<runtime>` when it names a runtime, else `mt:<format>` or
`mt:<format>:<version>`, plus `pv:<protocol>` when it names a protocol version. A pod
carries `rt:<its runtime>`, `mt:<format>` and `mt:<format>:<version>` for each format
its runtime auto-selects, and `pv:<protocol>` for each protocol it speaks. A pod can
serve a model when every label the model asks for is in the pod's set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

LOCAL_SECRET_LABEL = "meshserve.io/local-secret"
"""Label of the ConfigMap that carries a Secret in local mode's resource store: the admin API
hides its values unless asked for them (`secretValues=true`, with the admin token when set)."""


@dataclass(frozen=True)
class SupportedFormat:
    name: str
    version: str | None = None
    auto_select: bool = False


def model_labels(
    *, model_type: str, model_type_version: str = "", runtime: str = "", protocol_version: str = ""
) -> frozenset[str]:
    labels: set[str] = set()
    if runtime:
        labels.add(f"rt:{runtime}")
    else:
        labels.add(f"mt:{model_type}:{model_type_version}" if model_type_version else f"mt:{model_type}")
    if protocol_version:
        labels.add(f"pv:{protocol_version}")
    return frozenset(labels)


def runtime_labels(
    *, runtime: str, formats: Iterable[SupportedFormat], protocol_versions: Iterable[str] = ()
) -> frozenset[str]:
    labels = {f"rt:{runtime}"}
    for fmt in formats:
        if fmt.auto_select:
            labels.add(f"mt:{fmt.name}")
            if fmt.version:
                labels.add(f"mt:{fmt.name}:{fmt.version}")
    labels.update(f"pv:{pv}" for pv in protocol_versions)
    return frozenset(labels)


def parse_formats(spec: str) -> list[SupportedFormat]:
    """Parse `sklearn:0,xgboost:1,lightgbm:3` (all auto-selected) for settings/env vars."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, version = item.partition(":")
        out.append(SupportedFormat(name=name, version=version or None, auto_select=True))
    return out


def runtime_spec_from_labels(labels: Iterable[str]) -> dict[str, Any]:
    """The part of a ServingRuntime spec a pod's labels carry (the inverse of
    `runtime_labels`): the auto-selected formats, `name` or `name:version`, and the
    protocol versions, each sorted."""
    versions: dict[str, str] = {}
    protocols = []
    for label in labels:
        kind, _, rest = label.partition(":")
        if kind == "mt":
            name, _, version = rest.partition(":")
            if version or name not in versions:
                versions[name] = version
        elif kind == "pv":
            protocols.append(rest)
    return {
        "supportedModelFormats": [f"{n}:{v}" if v else n for n, v in sorted(versions.items())],
        "protocolVersions": sorted(protocols),
    }
