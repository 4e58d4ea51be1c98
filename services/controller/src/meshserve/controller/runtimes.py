"""ServingRuntime / ClusterServingRuntime: parsing, validation, precedence and runtime selection.

Pure. Owns:
* `parse_runtime`: CR dict -> frozen `Runtime`.
* `validate_runtime`: upstream's `servingruntime_validator.go` rules (reserved container, port,
  volume and mount names, reserved ports 8080/8085/8089/8090 and 11881-11899, `mm-` prefix,
  no readinessProbe/lifecycle, builtInAdapter.serverType known and backed by a container).
  meshserve's own puller listens on 8085 inside the pod, which is why 8085 stays reserved.
* `effective_runtimes`: a namespaced ServingRuntime overrides a ClusterServingRuntime of the same
  name (upstream's `srSpecs` map).
* `supporting_runtimes` / `select_runtime`: which runtimes can serve a model. A runtime is
  *eligible* when it is enabled, multiModel and valid. It supports a model when every label the
  model asks for (`rt:`/`mt:`/`pv:`) is in the runtime's label set, and the runtime's labels
  carry `mt:` only for formats with `autoSelect: true` (so an explicit `runtime:` is the only way
  to reach a runtime for a format it does not auto-select).

* `model_cache_spec`: the node model cache a runtime's pods get (annotations
  `meshserve.io/model-cache` = `emptyDir` (default) | `hostPath:/<absolute node folder>` |
  `none`, and `meshserve.io/model-cache-size` = a quantity such as `20Gi`); a bad value is a
  validation error, so the runtime is not deployed with a cache it did not ask for.

Invariant: selection never returns a disabled, non-multiModel or invalid runtime.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from meshserve.common import labels as type_labels
from meshserve.controller.specs import ModelSpec

RESERVED_CONTAINER_NAMES = frozenset({"mm", "rest-proxy", "puller"})
RESERVED_PORT_NAMES = frozenset({"grpc", "http", "prometheus"})
RESERVED_PORTS = frozenset({8080, 8085, 8089, 8090, *range(11881, 11900)})
RESERVED_VOLUME_NAMES = frozenset(
    {"storage-config", "etcd-config", "tc-config", "domain-socket", "models-dir", "model-cache"}
)
RESERVED_MOUNT_NAMES = frozenset({"storage-config", "etcd-config", "tc-config", "domain-socket"})
RESERVED_PREFIX = "mm-"
MODEL_CACHE_ANNOTATION = "meshserve.io/model-cache"
MODEL_CACHE_SIZE_ANNOTATION = "meshserve.io/model-cache-size"
PER_MODEL_CONCURRENCY_ANNOTATION = "perModelConcurrencyLimit"
"""Upstream's runtime annotation: at most this many requests in flight per model copy (puller env
`LIMIT_PER_MODEL_CONCURRENCY`; 0 or unset: no limit)."""
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


@dataclass(frozen=True)
class ModelCacheSpec:
    """The node model cache of a runtime's pods (see `model_cache_spec`)."""

    kind: Literal["emptyDir", "hostPath", "none"]
    host_path: str = ""
    size: str = ""
    """A Kubernetes quantity (the cache's bound), or "" for the default."""


@dataclass(frozen=True)
class BuiltInAdapter:
    server_type: str
    runtime_management_port: int = 0
    mem_buffer_bytes: int = 0
    model_loading_timeout_millis: int = 0
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Runtime:
    name: str
    namespace: str          # "" for a ClusterServingRuntime
    cluster_scoped: bool
    formats: tuple[type_labels.SupportedFormat, ...]
    multi_model: bool = False
    disabled: bool = False
    protocol_versions: tuple[str, ...] = ()
    grpc_endpoint: str = ""
    grpc_data_endpoint: str = ""
    http_data_endpoint: str = ""
    replicas: int | None = None
    storage_helper_disabled: bool = False
    built_in_adapter: BuiltInAdapter | None = None
    annotations: tuple[tuple[str, str], ...] = ()
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    """The raw spec (containers, volumes, ...) for building the Deployment; treat as read-only."""

    @property
    def kind(self) -> str:
        return "ClusterServingRuntime" if self.cluster_scoped else "ServingRuntime"

    def labels(self, *, rest_proxy: bool = True) -> frozenset[str]:
        """Label set of this runtime's pods; `pv:v2` is added when REST is served and it speaks grpc-v2."""
        protocols = list(self.protocol_versions)
        if rest_proxy and "grpc-v2" in protocols and "v2" not in protocols:
            protocols.append("v2")
        return type_labels.runtime_labels(runtime=self.name, formats=self.formats, protocol_versions=protocols)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_runtime(obj: Mapping[str, Any], *, cluster_scoped: bool) -> Runtime:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    formats = tuple(
        type_labels.SupportedFormat(
            name=str(f["name"]),
            version=str(f["version"]) if f.get("version") not in (None, "") else None,
            auto_select=bool(f.get("autoSelect", False)),
        )
        for f in spec.get("supportedModelFormats") or []
        if isinstance(f, Mapping) and f.get("name")
    )
    adapter = spec.get("builtInAdapter")
    built_in = None
    if isinstance(adapter, Mapping):
        built_in = BuiltInAdapter(
            server_type=str(adapter.get("serverType") or ""),
            runtime_management_port=_int_or_none(adapter.get("runtimeManagementPort")) or 0,
            mem_buffer_bytes=_int_or_none(adapter.get("memBufferBytes")) or 0,
            model_loading_timeout_millis=_int_or_none(adapter.get("modelLoadingTimeoutMillis")) or 0,
            env=tuple((str(e["name"]), str(e.get("value", ""))) for e in adapter.get("env") or [] if isinstance(e, Mapping) and "name" in e),
        )
    helper = spec.get("storageHelper")
    return Runtime(
        name=str(meta.get("name") or ""),
        namespace="" if cluster_scoped else str(meta.get("namespace") or ""),
        cluster_scoped=cluster_scoped,
        formats=formats,
        multi_model=bool(spec.get("multiModel", False)),
        disabled=bool(spec.get("disabled", False)),
        protocol_versions=tuple(str(p) for p in spec.get("protocolVersions") or []),
        grpc_endpoint=str(spec.get("grpcEndpoint") or ""),
        grpc_data_endpoint=str(spec.get("grpcDataEndpoint") or ""),
        http_data_endpoint=str(spec.get("httpDataEndpoint") or ""),
        replicas=_int_or_none(spec.get("replicas")),
        storage_helper_disabled=bool(isinstance(helper, Mapping) and helper.get("disabled")),
        built_in_adapter=built_in,
        annotations=tuple(sorted((str(k), str(v)) for k, v in (meta.get("annotations") or {}).items())),
        spec=spec,
    )


def _reserved_name(name: str, reserved: frozenset[str]) -> bool:
    return name in reserved or name.startswith(RESERVED_PREFIX)


def model_cache_spec(runtime: Runtime) -> tuple[ModelCacheSpec | None, list[str]]:
    """The runtime's model cache from its annotations, or None and the errors."""
    annotations = dict(runtime.annotations)
    value = annotations.get(MODEL_CACHE_ANNOTATION, "emptyDir").strip()
    size = annotations.get(MODEL_CACHE_SIZE_ANNOTATION, "").strip()
    errors: list[str] = []
    if size and (not _QUANTITY.match(size) or float(re.sub(r"[a-zA-Z]+$", "", size)) <= 0):
        errors.append(
            f"annotation {MODEL_CACHE_SIZE_ANNOTATION} {size!r} must be a positive quantity such as 20Gi or 500M"
        )
    kind, _, path = value.partition(":")
    if kind in ("emptyDir", "none") and not path:
        spec = ModelCacheSpec(kind="emptyDir" if kind == "emptyDir" else "none", size=size)
    elif kind == "hostPath" and path.startswith("/") and ".." not in PurePosixPath(path).parts and path != "/":
        spec = ModelCacheSpec(kind="hostPath", host_path=path.rstrip("/"), size=size)
    else:
        spec = None
        errors.append(
            f"annotation {MODEL_CACHE_ANNOTATION} {value!r} must be emptyDir, none or hostPath:/<absolute node folder>"
        )
    return (None if errors else spec), errors


def validate_runtime(runtime: Runtime, *, built_in_server_types: Iterable[str]) -> list[str]:
    """Problems that make the runtime unusable (empty list when valid)."""
    errors: list[str] = []
    containers = [c for c in runtime.spec.get("containers") or [] if isinstance(c, Mapping)]
    if not containers:
        errors.append("spec.containers must list at least one container")
    names = {str(c.get("name", "")) for c in containers}
    if runtime.built_in_adapter is not None:
        st = runtime.built_in_adapter.server_type
        allowed = list(built_in_server_types)
        if st not in allowed:
            errors.append(f"spec.builtInAdapter.serverType {st!r} is not one of {', '.join(allowed)}")
        elif st not in names:
            errors.append(f"must include runtime container with name {st}")
    for c in containers:
        cname = str(c.get("name", ""))
        if _reserved_name(cname, RESERVED_CONTAINER_NAMES):
            errors.append(f"container name {cname!r} is reserved")
        if c.get("readinessProbe") is not None:
            errors.append(f"container {cname!r}: readinessProbe is not allowed")
        if c.get("lifecycle") is not None:
            errors.append(f"container {cname!r}: lifecycle is not allowed")
        for port in c.get("ports") or []:
            if not isinstance(port, Mapping):
                continue
            pname = str(port.get("name") or "")
            if pname and _reserved_name(pname, RESERVED_PORT_NAMES):
                errors.append(f"container {cname!r}: port name {pname!r} is reserved")
            number = port.get("containerPort")
            if isinstance(number, int) and number in RESERVED_PORTS:
                errors.append(f"container {cname!r}: port {number} is reserved")
        for mount in c.get("volumeMounts") or []:
            mname = str(mount.get("name") or "") if isinstance(mount, Mapping) else ""
            if mname and _reserved_name(mname, RESERVED_MOUNT_NAMES):
                errors.append(f"container {cname!r}: volume mount {mname!r} is reserved")
    for volume in runtime.spec.get("volumes") or []:
        vname = str(volume.get("name") or "") if isinstance(volume, Mapping) else ""
        if vname and _reserved_name(vname, RESERVED_VOLUME_NAMES):
            errors.append(f"volume name {vname!r} is reserved")
    for endpoint_field in ("grpc_endpoint", "grpc_data_endpoint"):
        value = getattr(runtime, endpoint_field)
        if value and not _valid_endpoint(value):
            errors.append(f"{_camel(endpoint_field)} {value!r} must be port:<n> or unix:<path>")
    errors += model_cache_spec(runtime)[1]
    per_model = dict(runtime.annotations).get(PER_MODEL_CONCURRENCY_ANNOTATION)
    if per_model is not None and not per_model.strip().isdigit():
        errors.append(
            f"annotation {PER_MODEL_CONCURRENCY_ANNOTATION} {per_model!r} must be a non-negative integer "
            "(requests in flight per model copy; 0: no limit)"
        )
    return errors


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _valid_endpoint(value: str) -> bool:
    kind, _, rest = value.partition(":")
    if kind == "port":
        return rest.isdigit() and 0 < int(rest) < 65536
    return kind == "unix" and rest.startswith("/")


def endpoint_port(value: str) -> int | None:
    kind, _, rest = value.partition(":")
    return int(rest) if kind == "port" and rest.isdigit() else None


def effective_runtimes(*, namespaced: Iterable[Runtime], cluster: Iterable[Runtime]) -> dict[str, Runtime]:
    """Name -> runtime for one namespace; a namespaced ServingRuntime wins over a cluster one."""
    result = {rt.name: rt for rt in cluster}
    result.update({rt.name: rt for rt in namespaced})
    return result


def is_eligible(runtime: Runtime, *, built_in_server_types: Iterable[str]) -> bool:
    return runtime.multi_model and not runtime.disabled and not validate_runtime(
        runtime, built_in_server_types=built_in_server_types
    )


class SelectionFailure(enum.StrEnum):
    RUNTIME_NOT_RECOGNIZED = "RuntimeNotRecognized"
    NO_SUPPORTING_RUNTIME = "NoSupportingRuntime"


SELECTION_MESSAGES = {
    SelectionFailure.RUNTIME_NOT_RECOGNIZED: "Specified runtime name not recognized",
    SelectionFailure.NO_SUPPORTING_RUNTIME: "No ServingRuntime supports specified model type and/or protocol",
}


@dataclass(frozen=True)
class Selection:
    runtimes: tuple[str, ...] = ()
    """Names of every eligible runtime that supports the model, sorted."""
    failure: SelectionFailure | None = None

    @property
    def runtime(self) -> str | None:
        return self.runtimes[0] if self.runtimes else None

    @property
    def message(self) -> str:
        return SELECTION_MESSAGES[self.failure] if self.failure else ""


def supporting_runtimes(
    model: ModelSpec, runtimes: Mapping[str, Runtime], *, built_in_server_types: Iterable[str], rest_proxy: bool = True
) -> tuple[str, ...]:
    wanted = model.labels()
    types = tuple(built_in_server_types)
    return tuple(
        sorted(
            name
            for name, rt in runtimes.items()
            if is_eligible(rt, built_in_server_types=types) and wanted <= rt.labels(rest_proxy=rest_proxy)
        )
    )


def select_runtime(
    model: ModelSpec, runtimes: Mapping[str, Runtime], *, built_in_server_types: Iterable[str], rest_proxy: bool = True
) -> Selection:
    """Eligible runtimes for `model`, or why there is none (with upstream's reason)."""
    found = supporting_runtimes(model, runtimes, built_in_server_types=built_in_server_types, rest_proxy=rest_proxy)
    if found:
        return Selection(runtimes=found)
    if model.runtime:
        return Selection(failure=SelectionFailure.RUNTIME_NOT_RECOGNIZED)
    return Selection(failure=SelectionFailure.NO_SUPPORTING_RUNTIME)
