"""The `model-serving-config` ConfigMap: upstream's keys, defaults and rules, parsed without I/O.

Owns: turning the ConfigMap's `config.yaml` text into a frozen `ServingConfig`, and the rule for
what happens on a bad update (`next_config`: the previous good config stays in force and the
error is reported). Never reads the cluster or the environment.

Rules (ModelMesh Serving `pkg/config/config.go`, facts §2):
* The ConfigMap must have a data key `config.yaml`; otherwise the error is
  `User ConfigMap must contain a key named config.yaml`. A missing ConfigMap means all defaults.
* Keys are case-insensitive (viper), at every level of the known structure. The *contents* of
  label/annotation maps keep their case: they are Kubernetes keys, not config keys.
* Unknown top-level keys are ignored (as viper does) but listed in `ParseResult.warnings`, with
  the nearest valid key when there is one (`podsPerRuntme` -> did you mean `podsPerRuntime`?).
* An unknown field inside a section meshserve reads (`tls`, `metrics`, `scaleToZero`, `restProxy`,
  `storageHelperImage`, `storageHelperResources`) rejects the update, naming the nearest valid field.
* A value of the wrong type or out of range rejects the whole update with a message naming the key.
* `payloadProcessors` entries must be http(s) URLs with a host (upstream POSTs CloudEvents to
  them); anything else, upstream's `logger://` included, rejects the update naming the entry
  (userinfo hidden).

Which key is honoured, refused or not applicable, and why: `docs/config-keys.md`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import yaml

CONFIG_KEY = "config.yaml"
MISSING_KEY_ERROR = "User ConfigMap must contain a key named config.yaml"


class ConfigError(ValueError):
    """The user config is invalid; the message says which key and why."""


@dataclass(frozen=True)
class ImageRef:
    name: str
    tag: str = "latest"
    digest: str = ""
    command: tuple[str, ...] = ()

    @property
    def image(self) -> str:
        """`name@digest` when a digest is set (a digest wins over the tag), else `name:tag`."""
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag}" if self.tag else self.name


@dataclass(frozen=True)
class Resources:
    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)

    def to_k8s(self) -> dict[str, dict[str, str]]:
        return {"requests": dict(self.requests), "limits": dict(self.limits)}


@dataclass(frozen=True)
class ServingConfig:
    """Effective configuration; field defaults are upstream's (facts §2)."""

    inference_service_name: str = "modelmesh-serving"
    inference_service_port: int = 8033
    storage_secret_name: str = "storage-config"
    pods_per_runtime: int = 2
    headless_service: bool = True
    tls_secret_name: str = ""
    tls_client_auth: str = ""
    enable_access_logging: bool = False
    service_account_name: str = ""
    metrics_enabled: bool = True
    metrics_port: int = 2112
    metrics_scheme: str = "https"
    metrics_disable_prometheus_operator_support: bool = False
    scale_to_zero_enabled: bool = True
    scale_to_zero_grace_period_seconds: int = 60
    grpc_max_message_size_bytes: int = 16 * 1024 * 1024
    rest_proxy_enabled: bool = True
    rest_proxy_port: int = 8008
    rest_proxy_skip_verify: bool = False
    # meshserve's storage helper is its puller (upstream: kserve/modelmesh-runtime-adapter)
    storage_helper_image: ImageRef = ImageRef(
        name="meshserve/puller", tag="0.1.0", command=("python", "-m", "meshserve.puller")
    )
    storage_helper_resources: Resources = Resources(
        requests={"cpu": "50m", "memory": "96Mi"}, limits={"cpu": "2", "memory": "512Mi"}
    )
    built_in_server_types: tuple[str, ...] = ("triton", "mlserver", "ovms", "torchserve")
    payload_processors: tuple[str, ...] = ()
    runtime_pod_labels: Mapping[str, str] = field(default_factory=dict)
    runtime_pod_annotations: Mapping[str, str] = field(default_factory=dict)
    image_pull_secrets: tuple[str, ...] = ()
    allow_any_pvc: bool = False

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_secret_name)

    def grpc_endpoint(self, namespace: str) -> str:
        """`grpc://<serviceName>.<namespace>:<port>` (upstream `modelmesh_service.go`)."""
        return f"grpc://{self.inference_service_name}.{namespace}:{self.inference_service_port}"

    def http_endpoint(self, namespace: str) -> str:
        if not self.rest_proxy_enabled:
            return ""
        scheme = "https" if self.tls_enabled else "http"
        return f"{scheme}://{self.inference_service_name}.{namespace}:{self.rest_proxy_port}"


@dataclass(frozen=True)
class ParseResult:
    config: ServingConfig
    warnings: tuple[str, ...] = ()


# --- typed readers -------------------------------------------------------------------------------


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _int(key: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{key}: must be {bound}, got {value}")
    return value


def _str(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected a string, got {value!r}")


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    return tuple(value)


def _str_map(key: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a map of strings, got {value!r}")
    return {str(k): _str(f"{key}.{k}", v) for k, v in value.items()}


def _section(key: str, value: Any) -> dict[str, Any]:
    """A nested config object, its keys lower-cased (case-insensitive like the top level)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a map, got {value!r}")
    return {str(k).lower(): v for k, v in value.items()}


def _image(key: str, value: Any, default: ImageRef) -> ImageRef:
    sec = _section(key, value)
    _reject_unknown(key, value, SECTION_KEYS[key])
    return ImageRef(
        name=_str(f"{key}.name", sec.get("name", default.name)) or default.name,
        tag=_str(f"{key}.tag", sec.get("tag", default.tag if "name" not in sec else "latest")),
        digest=_str(f"{key}.digest", sec.get("digest", "")),
        command=_str_list(f"{key}.command", sec["command"]) if "command" in sec else default.command,
    )


def _resources(key: str, value: Any, default: Resources) -> Resources:
    sec = _section(key, value)
    _reject_unknown(key, value, SECTION_KEYS[key])
    return Resources(
        requests=_str_map(f"{key}.requests", sec["requests"]) if "requests" in sec else default.requests,
        limits=_str_map(f"{key}.limits", sec["limits"]) if "limits" in sec else default.limits,
    )


def nearest_key(word: str, valid: Iterable[str]) -> str | None:
    """The valid key closest to `word` (case-insensitive, difflib's ratio >= 0.6), if any."""
    by_lower = {v.lower(): v for v in valid}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def _did_you_mean(word: str, valid: Iterable[str]) -> str:
    near = nearest_key(word, valid)
    return f" (did you mean {near!r}?)" if near else ""


def _reject_unknown(key: str, raw: Any, allowed: Iterable[str]) -> None:
    """Refuse fields of section `key` that are not in `allowed` (canonical spelling), naming
    the nearest valid field of each."""
    if not isinstance(raw, Mapping):
        return
    valid = tuple(allowed)
    lower = {a.lower() for a in valid}
    unknown = sorted(str(k) for k in raw if str(k).lower() not in lower)
    if unknown:
        named = ", ".join(f"{u!r}{_did_you_mean(u, valid)}" for u in unknown)
        raise ConfigError(f"{key}: unknown field(s) {named}; valid fields: {', '.join(valid)}")


TOP_LEVEL_KEYS = (
    "inferenceServiceName", "inferenceServicePort", "storageSecretName", "podsPerRuntime", "headlessService",
    "tls", "enableAccessLogging", "serviceAccountName", "metrics", "scaleToZero", "grpcMaxMessageSizeBytes",
    "restProxy", "modelMeshImage", "modelMeshResources", "storageHelperImage", "storageHelperResources",
    "builtInServerTypes", "payloadProcessors", "runtimePodLabels", "runtimePodAnnotations", "imagePullSecrets",
    "allowAnyPVC", "internalModelMeshEnvVars", "modelMeshEndpoint", "etcdSecretName",
)
"""Upstream's top-level keys (`pkg/config/config.go`), as spelled in its docs."""
SECTION_KEYS: Mapping[str, tuple[str, ...]] = {
    "tls": ("secretName", "clientAuth"),
    "metrics": ("enabled", "port", "scheme", "disablePrometheusOperatorSupport"),
    "scaleToZero": ("enabled", "gracePeriodSeconds"),
    "restProxy": ("enabled", "port", "skipVerify", "image", "resources"),
    "storageHelperImage": ("name", "tag", "digest", "command"),
    "storageHelperResources": ("requests", "limits"),
}
"""The fields of the sections meshserve reads; an unknown one rejects the update."""

_TOP_LEVEL = {k.lower() for k in TOP_LEVEL_KEYS}

NOT_APPLIED_YET: Mapping[str, str] = {}
"""Keys meshserve parses but does not act on yet: setting one gives a warning saying so
(docs/config-keys.md; `tests/unit/test_config_keys.py` keeps the list true)."""
PARTLY_APPLIED: Mapping[tuple[str, str], str] = {
    ("tls.clientAuth", "optional"): (
        "the router either requires client certificates (require) or does not ask for any; optional is "
        "served as no client authentication"
    ),
}
"""(key, value) pairs meshserve honours only in part: setting one gives a warning saying what is left."""
NOT_APPLICABLE: Mapping[str, str] = {
    "modelMeshImage": "there is no mm container: the router and scheduler Deployments route",
    "modelMeshResources": "there is no mm container: set the router's and scheduler's resources in the manifests",
    "internalModelMeshEnvVars": "there is no mm container: the router and scheduler take MESHSERVE_* settings",
    "restProxy.image": "there is no rest-proxy container: the router serves REST itself",
    "restProxy.resources": "there is no rest-proxy container: the router serves REST itself",
    "modelMeshEndpoint": "the scheduler's address is the controller's MESHSERVE_CONTROLLER_SCHEDULER_ADDRESS",
    "etcdSecretName": "there is no etcd: Redis and Postgres URLs come from the meshserve-infra Secret",
    "metrics.disablePrometheusOperatorSupport": (
        "the controller creates no ServiceMonitor or PodMonitor: they are the opt-in kustomize component "
        "deploy/kustomize/components/prometheus-operator; leave it out instead"
    ),
    "restProxy.skipVerify": (
        "there is no rest-proxy container calling ModelMesh's gRPC port over TLS: the router serves REST and "
        "gRPC in one process"
    ),
}
"""Upstream keys that mean nothing in meshserve's architecture: accepted, with a warning."""


def _is_set(top: Mapping[str, Any], path: str) -> bool:
    section, _, name = path.lower().partition(".")
    value = top.get(section)
    if name:
        return isinstance(value, Mapping) and {str(k).lower(): v for k, v in value.items()}.get(name) is not None
    return value is not None


def _value(top: Mapping[str, Any], path: str) -> Any:
    section, _, name = path.lower().partition(".")
    value = top.get(section)
    if name:
        return {str(k).lower(): v for k, v in value.items()}.get(name) if isinstance(value, Mapping) else None
    return value


def _unapplied_warnings(top: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(
        [f"config key {k!r} is not applied yet: {why}" for k, why in NOT_APPLIED_YET.items() if _is_set(top, k)]
        + [f"config key {k!r}: {v} is honoured only in part: {why}" for (k, v), why in PARTLY_APPLIED.items()
           if str(_value(top, k) or "").lower() == v]
        + [f"config key {k!r} has no effect in meshserve: {why}" for k, why in NOT_APPLICABLE.items() if _is_set(top, k)]
    )


def parse_config_yaml(text: str | None) -> ParseResult:
    """Parse the user's `config.yaml` over upstream's defaults.

    Raises:
        ConfigError: invalid YAML, a wrong type or an out-of-range value.
    """
    try:
        raw = yaml.safe_load(text or "")
    except yaml.YAMLError as err:
        raise ConfigError(f"config.yaml is not valid YAML: {err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("config.yaml must be a map of settings")
    top = {str(k).lower(): v for k, v in raw.items()}
    warnings = tuple(
        f"unknown config key {k!r} ignored{_did_you_mean(k, TOP_LEVEL_KEYS)}"
        for k in sorted(str(k) for k in raw) if k.lower() not in _TOP_LEVEL
    )
    d = ServingConfig()
    changes: dict[str, Any] = {}

    def take(name: str, attr: str, reader: Any) -> None:
        if name.lower() in top and top[name.lower()] is not None:
            changes[attr] = reader(name, top[name.lower()])

    take("inferenceServiceName", "inference_service_name", _dns_label)
    take("inferenceServicePort", "inference_service_port", lambda k, v: _int(k, v, low=1, high=65535))
    take("storageSecretName", "storage_secret_name", _dns_label)
    take("podsPerRuntime", "pods_per_runtime", lambda k, v: _int(k, v, low=0, high=65535))
    take("headlessService", "headless_service", _bool)
    take("enableAccessLogging", "enable_access_logging", _bool)
    take("serviceAccountName", "service_account_name", _str)
    take("grpcMaxMessageSizeBytes", "grpc_max_message_size_bytes", lambda k, v: _int(k, v, low=1))
    take("allowAnyPVC", "allow_any_pvc", _bool)
    take("builtInServerTypes", "built_in_server_types", _str_list)
    take("runtimePodLabels", "runtime_pod_labels", _str_map)
    take("runtimePodAnnotations", "runtime_pod_annotations", _str_map)
    take("storageHelperImage", "storage_helper_image", lambda k, v: _image(k, v, d.storage_helper_image))
    take("storageHelperResources", "storage_helper_resources",
         lambda k, v: _resources(k, v, d.storage_helper_resources))
    if "payloadprocessors" in top:
        procs = _str_list("payloadProcessors", top["payloadprocessors"])
        for p in procs:
            _payload_processor(p)
        changes["payload_processors"] = procs
    if "imagepullsecrets" in top and top["imagepullsecrets"] is not None:
        secrets = top["imagepullsecrets"]
        if not isinstance(secrets, list):
            raise ConfigError("imagePullSecrets: expected a list of {name: ...}")
        names = []
        for entry in secrets:
            if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                names.append(entry["name"])
            elif isinstance(entry, str):
                names.append(entry)
            else:
                raise ConfigError(f"imagePullSecrets: bad entry {entry!r}, expected {{name: <secret>}}")
        changes["image_pull_secrets"] = tuple(names)
    tls = _section("tls", top.get("tls"))
    if tls:
        _reject_unknown("tls", top.get("tls"), SECTION_KEYS["tls"])
        changes["tls_secret_name"] = _str("tls.secretName", tls.get("secretname"))
        auth = _str("tls.clientAuth", tls.get("clientauth")).lower()
        if auth not in ("", "require", "optional"):
            raise ConfigError(f"tls.clientAuth: must be require or optional, got {auth!r}")
        changes["tls_client_auth"] = auth
    metrics = _section("metrics", top.get("metrics"))
    if metrics:
        _reject_unknown("metrics", top.get("metrics"), SECTION_KEYS["metrics"])
        if "enabled" in metrics:
            changes["metrics_enabled"] = _bool("metrics.enabled", metrics["enabled"])
        if "port" in metrics:
            changes["metrics_port"] = _int("metrics.port", metrics["port"], low=1, high=65535)
        if "scheme" in metrics:
            scheme = _str("metrics.scheme", metrics["scheme"]).lower()
            if scheme not in ("http", "https"):
                raise ConfigError(f"metrics.scheme: must be http or https, got {scheme!r}")
            changes["metrics_scheme"] = scheme
        if "disableprometheusoperatorsupport" in metrics:
            changes["metrics_disable_prometheus_operator_support"] = _bool(
                "metrics.disablePrometheusOperatorSupport", metrics["disableprometheusoperatorsupport"]
            )
    stz = _section("scaleToZero", top.get("scaletozero"))
    if stz:
        _reject_unknown("scaleToZero", top.get("scaletozero"), SECTION_KEYS["scaleToZero"])
        if "enabled" in stz:
            changes["scale_to_zero_enabled"] = _bool("scaleToZero.enabled", stz["enabled"])
        if "graceperiodseconds" in stz:
            changes["scale_to_zero_grace_period_seconds"] = _int(
                "scaleToZero.gracePeriodSeconds", stz["graceperiodseconds"], low=0
            )
    rest = _section("restProxy", top.get("restproxy"))
    if rest:
        _reject_unknown("restProxy", top.get("restproxy"), SECTION_KEYS["restProxy"])
        if "enabled" in rest:
            changes["rest_proxy_enabled"] = _bool("restProxy.enabled", rest["enabled"])
        if "port" in rest:
            changes["rest_proxy_port"] = _int("restProxy.port", rest["port"], low=1, high=65535)
        if "skipverify" in rest:
            changes["rest_proxy_skip_verify"] = _bool("restProxy.skipVerify", rest["skipverify"])
    return ParseResult(config=replace(d, **changes), warnings=warnings + _unapplied_warnings(top))


def _payload_processor(entry: str) -> None:
    """An http(s) URL with a host (upstream's `?<modelId>#<method>` filters allowed)."""
    shown = _hide_userinfo(entry)
    if " " in entry:
        raise ConfigError(f"payloadProcessors: entry {shown!r} must not contain spaces")
    try:
        parts = urlsplit(entry)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        _ = parts.port   # raises on a port that is not a number in range
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"payloadProcessors: entry {shown!r} is not an http(s) URL with a host; meshserve accepts only "
            "http:// or https:// processors (the URLs upstream POSTs each request's and response's CloudEvent "
            "to), not upstream's logger://"
        )


def _hide_userinfo(entry: str) -> str:
    scheme, sep, rest = entry.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return entry


def _dns_label(key: str, value: Any) -> str:
    text = _str(key, value)
    ok = 0 < len(text) <= 63 and text[0].isalnum() and text[-1].isalnum() and all(
        c.isdigit() or (c.isalpha() and c.islower()) or c == "-" for c in text
    )
    if not ok:
        raise ConfigError(f"{key}: {text!r} is not a valid DNS-1035 name (lower-case letters, digits, '-')")
    return text


def parse_configmap_data(data: Mapping[str, str] | None) -> ParseResult:
    """Parse a ConfigMap's `data`; `None` (no ConfigMap) gives all defaults."""
    if data is None:
        return ParseResult(config=ServingConfig())
    if CONFIG_KEY not in data:
        raise ConfigError(MISSING_KEY_ERROR)
    return parse_config_yaml(data[CONFIG_KEY])


@dataclass(frozen=True)
class ConfigUpdate:
    """Outcome of applying a ConfigMap change: the config now in force and what went wrong."""

    config: ServingConfig
    error: str = ""
    warnings: tuple[str, ...] = ()
    restart_needed: bool = False


def next_config(previous: ServingConfig, data: Mapping[str, str] | None) -> ConfigUpdate:
    """Apply a ConfigMap update; keep `previous` when the new content is invalid.

    `storageSecretName` only takes effect after a controller restart (as upstream); a change of
    it is kept out of the returned config and flagged with `restart_needed`.
    """
    try:
        result = parse_configmap_data(data)
    except ConfigError as err:
        return ConfigUpdate(config=previous, error=str(err))
    config = result.config
    restart = config.storage_secret_name != previous.storage_secret_name
    if restart:
        config = replace(config, storage_secret_name=previous.storage_secret_name)
    return ConfigUpdate(config=config, warnings=result.warnings, restart_needed=restart)
