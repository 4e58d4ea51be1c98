"""The Deployment of one runtime: model-server containers from the ServingRuntime + the puller.

Pure: `build_runtime_deployment` returns the manifest as a dict. Mirrors upstream's pod
composition (`controllers/modelmesh/*.go`) where it applies to meshserve: the runtime containers
mount `/models` from the `models-dir` emptyDir (size limit 1.5 x the sum of their memory limits),
the storage helper (meshserve's puller) runs beside them with the `storage-config` Secret mounted
at `/storage-config`, PVCs named in that Secret are mounted read-only at `/pvc_mounts/<name>`,
labels/annotations are layered defaults < config `runtimePodLabels` < ServingRuntime `labels`.
There is no `mm` or `rest-proxy` container: routing is the router's job.

Beyond upstream, what a pod on a real cluster needs (checked by `tests/unit/test_reconcile.py`):
* the router dials the model server directly, so the puller advertises the pod IP (downward
  API `status.podIP`) for the model server's gRPC *and* REST ports;
* `shareProcessNamespace: true` and one uid for every container, so the puller finds the model
  server's process by its command line (`MESHSERVE_PULLER_MODEL_SERVER_PROCESS`, per server kind)
  and reads its memory from /proc (PSS needs ptrace-read access: same uid, which dropping every
  capability keeps); the cgroup of the model server's container is not used because it is not
  visible from the puller's container, and it counts page cache that is not the models';
* the puller serves Prometheus metrics where the pod is annotated (`metrics.port`), over
  `metrics.scheme` (https: the pod's certificate, or a self-signed one the puller generates);
* probes (startup/readiness/liveness) on every container that does not bring its own, non-root,
  read-only root filesystem with emptyDirs for `/models` and `/tmp`, every capability dropped,
  seccomp RuntimeDefault, preferred anti-affinity across nodes, and a graceful stop: on SIGTERM
  the puller says goodbye to the scheduler (its copies are re-placed, routes withdrawn) while the
  model server's preStop sleep keeps it serving the requests already routed to it.

Storage beyond upstream:
* the node's model cache (the puller's `MESHSERVE_PULLER_CACHE_DIR`): a `model-cache` volume
  mounted in the puller at `/model-cache`, an emptyDir (the pod's own cache: a model evicted
  and loaded again on the same pod is copied from it, not downloaded) or, with the
  ServingRuntime annotation `meshserve.io/model-cache: hostPath:/<node folder>`, a hostPath
  every runtime pod of the node shares (they coordinate through the cache's file locks);
  `none` turns it off. `meshserve.io/model-cache-size` (a quantity) bounds it (the puller's
  LRU bound; an emptyDir's sizeLimit is twice that, room for downloads in flight). The
  cache and `/models` are two mounts, so the puller copies cached files into the model
  folder (link(2) cannot cross mounts): a local copy, not a download;
* `allowAnyPVC` (upstream's rule): the claims named by the predictors this runtime
  supports (`pvc://<claim>/...`, or `storage.parameters` `type: pvc` + `name`) are mounted
  read-only at `/pvc_mounts/<claim>` beside the storage-config Secret's own. Without it a
  claim not in the Secret is not mounted, and the puller fails the load saying so.

Invariant: the manifest's `meshserve.io/spec-hash` annotation is a hash of everything else in it
except `spec.replicas`, so reconcile can tell "needs patching" from "needs scaling".
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from meshserve.controller.internal_tls import InternalTls
from meshserve.controller.internal_tls import add_to_pod as add_internal_tls
from meshserve.controller.runtimes import (
    PER_MODEL_CONCURRENCY_ANNOTATION,
    ModelCacheSpec,
    Runtime,
    endpoint_port,
    model_cache_spec,
    select_runtime,
)
from meshserve.controller.serving_config import ServingConfig
from meshserve.controller.specs import PredictorCR
from meshserve.controller.storage_config import StorageConfig

SPEC_HASH_ANNOTATION = "meshserve.io/spec-hash"
RUNTIME_LABEL = "meshserve.io/runtime"
MANAGED_BY = "modelmesh-controller"
MODELS_DIR = "/models"
MODEL_CACHE_DIR = "/model-cache"
PVC_MOUNTS_DIR = "/pvc_mounts"
DEFAULT_MODEL_CACHE_BYTES = 20 << 30
"""The cache bound when neither the annotation nor the models-dir limit gives one (the puller's default)."""
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DEFAULT_MEM_BUFFER_BYTES = 256 * 1024 * 1024
PULLER_PORT = 8085
RUNTIME_POD_UID = 10001
"""The uid of every container of a runtime pod (the meshserve images' `USER`). One uid, so the
puller may read the model server's /proc/<pid>/smaps_rollup (ptrace-read access) without any
capability; a runtime container that sets its own `runAsUser` gives the puller that uid too."""
MODEL_SERVER_STOP_DELAY_SECONDS = 15
"""The model server's preStop sleep: the time the puller's goodbye (SIGTERM at the same moment)
has to reach the scheduler and the router to stop sending requests before the server stops."""
SERVER_PROCESS_PATTERNS = {
    # regexes on /proc/<pid>/cmdline (arguments joined by spaces), per built-in server kind
    "mlserver": r"(^|/)mlserver start( |$)",
    "triton": r"(^|/)tritonserver( |$)",
    "ovms": r"(^|/)ovms( |$)",
}

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 0.001,
}


def parse_quantity(value: Any) -> int:
    """Bytes (or units) of a Kubernetes quantity such as `1Gi`, `512M`, `1e3` (no exponent forms)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    m = _QUANTITY.match(str(value).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return int(float(m.group(1)) * _SUFFIX[m.group(2)])


def deployment_name(config: ServingConfig, runtime_name: str) -> str:
    return f"{config.inference_service_name}-{runtime_name}"


def _server_container(runtime: Runtime, containers: list[dict[str, Any]]) -> dict[str, Any] | None:
    if runtime.built_in_adapter is not None:
        for c in containers:
            if c.get("name") == runtime.built_in_adapter.server_type:
                return c
    return containers[0] if containers else None


def capacity_bytes(runtime: Runtime) -> int:
    """Memory for models: the model server's memory request minus the buffer (upstream adapter rule)."""
    containers = [c for c in runtime.spec.get("containers") or [] if isinstance(c, dict)]
    server = _server_container(runtime, containers)
    if server is None:
        return 0
    request = (server.get("resources") or {}).get("requests", {}).get("memory")
    if request is None:
        request = (server.get("resources") or {}).get("limits", {}).get("memory")
    if request is None:
        return 0
    buffer = (runtime.built_in_adapter.mem_buffer_bytes if runtime.built_in_adapter else 0) or DEFAULT_MEM_BUFFER_BYTES
    return max(parse_quantity(request) - buffer, 0)


def default_model_size(runtime: Runtime) -> int:
    """The runtime's declared size of a model nothing is known about: upstream adapters read
    `DEFAULT_MODELSIZE` (bytes) from `builtInAdapter.env`; 0 when unset or not a positive
    integer (the puller's own default, ModelMesh's 1000000, then applies)."""
    env = dict(runtime.built_in_adapter.env) if runtime.built_in_adapter else {}
    value = env.get("DEFAULT_MODELSIZE", "").strip()
    return int(value) if value.isdigit() else 0


def _models_dir_limit(containers: list[dict[str, Any]]) -> str | None:
    total = 0
    for c in containers:
        limit = (c.get("resources") or {}).get("limits", {}).get("memory")
        if limit is not None:
            total += parse_quantity(limit)
    return str(int(total * 1.5)) if total else None


def _env_value(container: dict[str, Any] | None, name: str) -> str | None:
    for var in (container or {}).get("env") or []:
        if isinstance(var, dict) and var.get("name") == name and "value" in var:
            return str(var["value"])
    return None


def rest_port(runtime: Runtime) -> int | None:
    """The model server's KServe v2 REST port: MLServer's MLSERVER_HTTP_PORT (its default 8080
    when unset), Triton's 8000, OVMS's runtime management port (8888); None for a custom runtime."""
    kind = runtime.built_in_adapter.server_type if runtime.built_in_adapter else ""
    if kind == "mlserver":
        containers = [c for c in runtime.spec.get("containers") or [] if isinstance(c, dict)]
        value = _env_value(_server_container(runtime, containers), "MLSERVER_HTTP_PORT")
        return int(value) if value and value.isdigit() else 8080
    if kind == "triton":
        return 8000
    if kind == "ovms":
        return (runtime.built_in_adapter.runtime_management_port if runtime.built_in_adapter else 0) or 8888
    return None


def _process_pattern(runtime: Runtime) -> str:
    """How the puller finds the model server's process; for a custom runtime, the basename of
    its container's command or first argument (empty when neither is known)."""
    kind = runtime.built_in_adapter.server_type if runtime.built_in_adapter else ""
    if kind in SERVER_PROCESS_PATTERNS:
        return SERVER_PROCESS_PATTERNS[kind]
    containers = [c for c in runtime.spec.get("containers") or [] if isinstance(c, dict)]
    server = _server_container(runtime, containers) or {}
    words = [str(w) for w in list(server.get("command") or []) + list(server.get("args") or [])]
    for word in words:
        base = word.rsplit("/", 1)[-1]
        if base and not base.startswith("-") and base not in ("python", "python3", "sh", "bash"):
            return rf"(^|/| ){re.escape(base)}( |$)"
    return ""


def _data_endpoint(runtime: Runtime) -> str:
    port = endpoint_port(runtime.grpc_data_endpoint) or 8001
    return f"127.0.0.1:{port}"


PULLER_HEALTH_PORT = 8089  # the puller's /healthz + /readyz (MESHSERVE_PULLER_HEALTH_PORT)
SERVER_KINDS = ("mlserver", "triton", "ovms")  # the puller's adapters (MESHSERVE_PULLER_MODEL_SERVER_KIND)


LOCAL_COMMAND_ANNOTATION = "meshserve.io/local-command"
PRESTART_ANNOTATION = "meshserve.io/prestart-formats"
"""On a Triton ServingRuntime: the formats whose python-backend frameworks the pod imports
at start (comma-separated, or `all` for the runtime's auto-selected formats), so the
first model of each is measured without the framework's libraries. Costs that memory on
every pod from the start (all of onnx, pytorch, tensorflow, openvino, FIL: ~780 MiB),
which the puller takes off the pod's capacity. Unset: nothing is imported ahead."""


def puller_port(runtime: Runtime) -> int:
    """8085, or 8086 beside a custom runtime that serves the SPI on 8085 itself (upstream's
    custom-runtime convention: `grpcEndpoint: port:8085`)."""
    if runtime.built_in_adapter is None and endpoint_port(runtime.grpc_endpoint or "port:8085") == PULLER_PORT:
        return PULLER_PORT + 1
    return PULLER_PORT


def _puller(
    *, runtime: Runtime, config: ServingConfig, scheduler_address: str, claims: tuple[str, ...],
    cache: ModelCacheSpec, cache_bytes: int, runtime_id: str,
) -> dict[str, Any]:
    data_port = endpoint_port(runtime.grpc_data_endpoint) or 8001
    port = puller_port(runtime)
    formats = ",".join(f"{f.name}:{f.version}" if f.version else f.name for f in runtime.formats if f.auto_select)
    protocols = list(runtime.protocol_versions)
    if config.rest_proxy_enabled and "grpc-v2" in protocols and "v2" not in protocols:
        protocols.append("v2")
    timeout_ms = runtime.built_in_adapter.model_loading_timeout_millis if runtime.built_in_adapter else 0
    loading = dict(runtime.annotations).get("maxLoadingConcurrency", "1")
    env: list[dict[str, Any]] = [
        {"name": "MESHSERVE_PULLER_POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MESHSERVE_PULLER_LISTEN_ADDRESS", "value": f"0.0.0.0:{port}"},
        {"name": "MESHSERVE_PULLER_ADVERTISE_ADDRESS", "value": f"$(POD_IP):{port}"},
        {"name": "MESHSERVE_PULLER_SCHEDULER_ADDRESS", "value": scheduler_address},
        {"name": "MESHSERVE_PULLER_RUNTIME", "value": runtime_id or runtime.name},
        {"name": "MESHSERVE_PULLER_SUPPORTED_FORMATS", "value": formats},
        {"name": "MESHSERVE_PULLER_PROTOCOL_VERSIONS", "value": ",".join(protocols)},
        {"name": "MESHSERVE_PULLER_MODEL_DIR", "value": MODELS_DIR},
        {"name": "MESHSERVE_PULLER_STORAGE_CONFIG_DIR", "value": "/storage-config"},
        {"name": "MESHSERVE_PULLER_MODEL_SERVER_GRPC", "value": _data_endpoint(runtime)},
        {"name": "MESHSERVE_PULLER_MODEL_SERVER_ADVERTISE_GRPC", "value": f"$(POD_IP):{data_port}"},
        {"name": "MESHSERVE_PULLER_CAPACITY_BYTES", "value": str(capacity_bytes(runtime))},
        {"name": "MESHSERVE_PULLER_MAX_LOADING_CONCURRENCY", "value": str(loading)},
        {"name": "MESHSERVE_PULLER_LOG_JSON", "value": "true"},
        {"name": "MESHSERVE_PULLER_HEALTH_PORT", "value": str(PULLER_HEALTH_PORT)},
    ]
    per_model = dict(runtime.annotations).get(PER_MODEL_CONCURRENCY_ANNOTATION, "").strip()
    if per_model:   # validate_runtime refuses anything but a non-negative integer
        env.append({"name": "LIMIT_PER_MODEL_CONCURRENCY", "value": per_model})
    server_type = runtime.built_in_adapter.server_type if runtime.built_in_adapter else ""
    if server_type in SERVER_KINDS:
        env.append({"name": "MESHSERVE_PULLER_MODEL_SERVER_KIND", "value": server_type})
    if runtime.built_in_adapter is None:
        # a custom runtime serving ModelMesh's runtime SPI itself: the puller stays the pod's
        # agent and calls the SPI on its grpcEndpoint (with storageHelper.disabled, downloading
        # nothing: the runtime gets the storage details)
        env.append({"name": "MESHSERVE_PULLER_MODEL_SERVER_KIND", "value": "spi"})
        env.append({"name": "MESHSERVE_PULLER_MODEL_SERVER_ENDPOINT", "value": runtime.grpc_endpoint or "port:8085"})
        if runtime.storage_helper_disabled:
            env.append({"name": "MESHSERVE_PULLER_STORAGE_HELPER_DISABLED", "value": "true"})
    rest = rest_port(runtime)
    if rest is not None:
        # the router calls the model server's REST port directly, so the pod IP, never 127.0.0.1
        env.append({"name": "MESHSERVE_PULLER_MODEL_SERVER_REST", "value": f"http://127.0.0.1:{rest}"})
        env.append({"name": "MESHSERVE_PULLER_MODEL_SERVER_ADVERTISE_REST", "value": f"http://$(POD_IP):{rest}"})
    if pattern := _process_pattern(runtime):
        env.append({"name": "MESHSERVE_PULLER_MODEL_SERVER_PROCESS", "value": pattern})
    if config.metrics_enabled:
        env.append({"name": "MESHSERVE_PULLER_METRICS_PORT", "value": str(config.metrics_port)})
        env.append({"name": "MESHSERVE_PULLER_METRICS_SCHEME", "value": config.metrics_scheme})
    if server_type == "triton":
        # upstream's triton-2.x container serves /models/_triton_models on Triton's default HTTP port
        for var in env:
            if var["name"] == "MESHSERVE_PULLER_MODEL_DIR":
                var["value"] = f"{MODELS_DIR}/_triton_models"
        prestart = dict(runtime.annotations).get(PRESTART_ANNOTATION, "").strip()
        if prestart == "all":
            prestart = ",".join(dict.fromkeys(f.name for f in runtime.formats if f.auto_select))
        if prestart:
            env.append({"name": "MESHSERVE_PULLER_TRITON_PRESTART_FORMATS", "value": prestart})
    if server_type == "ovms":
        # upstream's ovms-1.x container reads /models/model_config_list.json and serves REST on the
        # runtime management port; base paths are under /models in both containers
        env.append({"name": "MESHSERVE_PULLER_OVMS_CONFIG_PATH", "value": f"{MODELS_DIR}/model_config_list.json"})
    if timeout_ms:
        env.append({"name": "MESHSERVE_PULLER_LOAD_TIMEOUT_SECONDS", "value": str(timeout_ms / 1000)})
    default_size = default_model_size(runtime)
    if default_size:
        env.append({"name": "MESHSERVE_PULLER_DEFAULT_MODEL_SIZE_BYTES", "value": str(default_size)})
    if cache.kind != "none":
        env.append({"name": "MESHSERVE_PULLER_CACHE_DIR", "value": MODEL_CACHE_DIR})
        env.append({"name": "MESHSERVE_PULLER_CACHE_MAX_BYTES", "value": str(cache_bytes)})
    env.append({"name": "HOME", "value": "/tmp"})   # the root filesystem is read-only
    mounts = [
        {"name": "models-dir", "mountPath": MODELS_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "storage-config", "mountPath": "/storage-config", "readOnly": True},
    ] + [{"name": pvc_volume_name(name), "mountPath": f"{PVC_MOUNTS_DIR}/{name}", "readOnly": True} for name in claims]
    if cache.kind != "none":
        mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_DIR})
    ports: list[dict[str, Any]] = [{"name": "mgmt", "containerPort": port},
                                   {"name": "health", "containerPort": PULLER_HEALTH_PORT}]
    if config.metrics_enabled:
        ports.append({"name": "prometheus", "containerPort": config.metrics_port})
    # /readyz turns true once the model server is ready and the puller has purged it (and false
    # when it says goodbye): startup waits for a slow model server; /healthz is liveness
    container: dict[str, Any] = {
        "name": "puller",
        "image": config.storage_helper_image.image,
        "env": env,
        "ports": ports,
        "resources": config.storage_helper_resources.to_k8s(),
        "volumeMounts": mounts,
        **_http_probes("health"),
        "securityContext": container_security_context(),
    }
    if config.storage_helper_image.command:
        container["command"] = list(config.storage_helper_image.command)
    return container


def _http_probes(port: int | str) -> dict[str, dict[str, Any]]:
    """The puller's probes: startup on /readyz (up to 5 minutes: a model server importing its
    frameworks), readiness on /readyz, liveness on /healthz."""
    ready = {"httpGet": {"path": "/readyz", "port": port}}
    return {
        "startupProbe": {**ready, "periodSeconds": 2, "failureThreshold": 150},
        "readinessProbe": {**ready, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10, "failureThreshold": 6},
    }


def _tcp_probes(port: int | str) -> dict[str, dict[str, Any]]:
    """Startup (up to 5 minutes: a model server importing its frameworks), readiness, liveness."""
    return {
        "startupProbe": {"tcpSocket": {"port": port}, "periodSeconds": 2, "failureThreshold": 150},
        "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 10, "failureThreshold": 6},
    }


def container_security_context() -> dict[str, Any]:
    """What every container of a runtime pod runs with unless its ServingRuntime says otherwise."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _harden_server_container(c: dict[str, Any], *, runtime: Runtime, is_server: bool) -> None:
    """Defaults for a model-server container from the ServingRuntime; what it sets itself wins."""
    mounts = c.setdefault("volumeMounts", [])
    if not any(m.get("name") == "models-dir" for m in mounts):
        mounts.append({"name": "models-dir", "mountPath": MODELS_DIR})
    if not any(m.get("mountPath") == "/tmp" for m in mounts):
        mounts.append({"name": "tmp", "mountPath": "/tmp"})
    sc = c.setdefault("securityContext", {})
    for key, value in container_security_context().items():
        sc.setdefault(key, value)
    if not is_server:
        return
    data_port = endpoint_port(runtime.grpc_data_endpoint) or 8001
    ports = c.setdefault("ports", [])
    declared = {p.get("containerPort") for p in ports}
    if data_port not in declared:
        ports.append({"name": "grpc", "containerPort": data_port})
    rest = rest_port(runtime)
    if rest is not None and rest not in declared and rest != data_port:
        ports.append({"name": "http", "containerPort": rest})
    for name, probe in _tcp_probes(data_port).items():
        c.setdefault(name, probe)
    lifecycle = c.setdefault("lifecycle", {})
    lifecycle.setdefault("preStop", {"sleep": {"seconds": MODEL_SERVER_STOP_DELAY_SECONDS}})


def _anti_affinity(selector: dict[str, str]) -> dict[str, Any]:
    """Preferred: the pods of one runtime on different nodes (one node lost, one copy lost)."""
    return {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {"labelSelector": {"matchLabels": dict(selector)}, "topologyKey": "kubernetes.io/hostname"},
    }]}


def pvc_volume_name(claim: str) -> str:
    """The pod volume of a claim: `pvc-<claim>` when that is a valid volume name (a DNS label
    of at most 63 characters), else `pvc-<hash of the claim>` (claim names may be longer and
    hold dots)."""
    name = f"pvc-{claim}"
    if len(name) <= 63 and _DNS_LABEL.match(name):
        return name
    return f"pvc-{hashlib.sha256(claim.encode()).hexdigest()[:16]}"


def predictor_pvc_claims(
    predictors: Iterable[PredictorCR], *, runtime_name: str, runtimes: Mapping[str, Runtime], config: ServingConfig
) -> tuple[str, ...]:
    """With `allowAnyPVC`, the claims named by the (valid, not deleting) predictors that the
    runtime `runtime_name` supports (upstream `servingruntime_controller.go`: storage
    parameters `type: pvc` and `name`, which a `pvc://<claim>/...` URI sets); () without it.
    Names that are not claim names (DNS subdomains) are left out: nothing could mount them,
    and the puller fails such a load with the claim's name."""
    if not config.allow_any_pvc:
        return ()
    claims: set[str] = set()
    for p in predictors:
        if p.spec is None or p.deleting:
            continue
        params = dict(p.spec.storage_params)
        claim = params.get("name", "")
        if params.get("type") != "pvc" or not claim or len(claim) > 253 or not _DNS_SUBDOMAIN.match(claim):
            continue
        selection = select_runtime(
            p.spec, runtimes, built_in_server_types=config.built_in_server_types, rest_proxy=config.rest_proxy_enabled
        )
        if runtime_name in selection.runtimes:
            claims.add(claim)
    return tuple(sorted(claims))


def _cache_volume(cache: ModelCacheSpec, *, cache_bytes: int) -> dict[str, Any] | None:
    if cache.kind == "hostPath":
        return {"name": "model-cache", "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}}
    if cache.kind == "emptyDir":
        return {"name": "model-cache", "emptyDir": {"sizeLimit": str(2 * cache_bytes)}}
    return None


def build_runtime_deployment(
    *, runtime: Runtime, config: ServingConfig, namespace: str, replicas: int, storage: StorageConfig,
    scheduler_address: str, pvc_claims: Iterable[str] = (), runtime_id: str = "",
    internal_tls: InternalTls | None = None,
) -> dict[str, Any]:
    """The runtime's Deployment manifest (apps/v1).

    Args:
        pvc_claims: claims to mount besides the storage-config Secret's `type: pvc` entries
            (`predictor_pvc_claims`: those of its predictors, with `allowAnyPVC`).
        runtime_id: the runtime name the pods register with the scheduler (cluster scope:
            `<namespace>__<runtime>`, see `scope`); default the runtime's own name.
        internal_tls: the internal TLS Secret mounted into the puller (`internal_tls`).
    """
    name = deployment_name(config, runtime.name)
    spec = runtime.spec
    containers: list[dict[str, Any]] = [copy.deepcopy(c) for c in spec.get("containers") or [] if isinstance(c, dict)]
    server = _server_container(runtime, containers)
    for c in containers:
        _harden_server_container(c, runtime=runtime, is_server=c is server)
    claims = tuple(sorted(set(storage.pvc_names()) | set(pvc_claims)))
    models_limit = _models_dir_limit(containers[: len(spec.get("containers") or [])])
    cache, _ = model_cache_spec(runtime)   # an invalid annotation makes the runtime ineligible (validate_runtime)
    cache = cache or ModelCacheSpec(kind="none")
    cache_bytes = parse_quantity(cache.size) if cache.size else (
        int(models_limit) if models_limit and cache.kind == "emptyDir" else DEFAULT_MODEL_CACHE_BYTES
    )
    has_puller = not runtime.storage_helper_disabled or runtime.built_in_adapter is None
    if has_puller:
        puller = _puller(
            runtime=runtime, config=config, scheduler_address=scheduler_address, claims=claims,
            cache=cache, cache_bytes=cache_bytes, runtime_id=runtime_id,
        )
        server_uid = ((server or {}).get("securityContext") or {}).get("runAsUser")
        if server_uid is not None:   # the puller reads the server's /proc entries: same uid
            puller["securityContext"]["runAsUser"] = server_uid
        containers.append(puller)
    selector = {"modelmesh-service": config.inference_service_name, "name": name}
    labels = {
        **selector,
        "app.kubernetes.io/instance": MANAGED_BY,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": MANAGED_BY,
        RUNTIME_LABEL: runtime.name,
        **dict(config.runtime_pod_labels),
        **{str(k): str(v) for k, v in (spec.get("labels") or {}).items()},
        **selector,   # the selector labels cannot be overridden
    }
    annotations: dict[str, str] = {}
    if config.metrics_enabled:
        annotations.update({
            "prometheus.io/path": "/metrics", "prometheus.io/port": str(config.metrics_port),
            # what the puller serves there (MESHSERVE_PULLER_METRICS_SCHEME)
            "prometheus.io/scheme": config.metrics_scheme, "prometheus.io/scrape": "true",
        })
    annotations.update(config.runtime_pod_annotations)
    annotations.update({str(k): str(v) for k, v in (spec.get("annotations") or {}).items()})
    if local := dict(runtime.annotations).get(LOCAL_COMMAND_ANNOTATION):
        annotations[LOCAL_COMMAND_ANNOTATION] = local  # how local mode runs this custom runtime
    models_dir: dict[str, Any] = {"name": "models-dir", "emptyDir": {}}
    if models_limit:
        models_dir["emptyDir"]["sizeLimit"] = models_limit
    volumes: list[dict[str, Any]] = [
        models_dir,
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "storage-config", "secret": {"secretName": config.storage_secret_name, "optional": True}},
        *[{"name": pvc_volume_name(n), "persistentVolumeClaim": {"claimName": n, "readOnly": True}} for n in claims],
        *copy.deepcopy(list(spec.get("volumes") or [])),
    ]
    if has_puller and (cache_volume := _cache_volume(cache, cache_bytes=cache_bytes)) is not None:
        volumes.append(cache_volume)
    affinity: dict[str, Any] = copy.deepcopy(dict(spec.get("affinity") or {})) or {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
            "matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64", "s390x"]}]
        }]}}
    }
    affinity.setdefault("podAntiAffinity", _anti_affinity(selector))
    pod: dict[str, Any] = {
        "containers": containers,
        "volumes": volumes,
        # the puller's goodbye, the server's preStop delay and the requests in flight fit in this
        "terminationGracePeriodSeconds": 90,
        # the puller measures the model server's processes (see the module's docstring)
        "shareProcessNamespace": True,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": RUNTIME_POD_UID, "runAsGroup": RUNTIME_POD_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": affinity,
    }
    if config.service_account_name:
        pod["serviceAccountName"] = config.service_account_name
    pull_secrets = [{"name": n} for n in config.image_pull_secrets] + copy.deepcopy(list(spec.get("imagePullSecrets") or []))
    if pull_secrets:
        pod["imagePullSecrets"] = pull_secrets
    for key in ("nodeSelector", "tolerations", "hostIPC"):
        if spec.get(key) is not None:
            pod[key] = copy.deepcopy(spec[key])
    if has_puller:
        pod = add_internal_tls(pod, container="puller", tls=internal_tls)
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "75%", "maxUnavailable": "15%"}},
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
        },
    }
    manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash(manifest)
    return manifest


def spec_hash(manifest: dict[str, Any]) -> str:
    """Hash of the manifest without replicas and without the hash annotation itself."""
    body = copy.deepcopy(manifest)
    body["spec"].pop("replicas", None)
    body["metadata"].get("annotations", {}).pop(SPEC_HASH_ANNOTATION, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
