"""Puller settings (env prefix `MESHSERVE_PULLER_`), on the common `ServiceSettings` base.

Each field's docstring is its description in the README's configuration table
(`scripts/settings_table.py`). Loaded once in `__main__` and passed down. May import pydantic
and `meshserve.common.settings` only.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from meshserve.common.settings import InternalTLS, ServiceSettings, TLSSettings, shared


class PullerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_PULLER_")

    pod_id: str = Field(default_factory=socket.gethostname)
    """This runtime pod's id in the scheduler (default: the host name, the pod name in Kubernetes)."""
    listen_address: str = "0.0.0.0:8085"
    """The ModelRuntime gRPC server's address."""
    tls: InternalTLS = TLSSettings()
    """TLS of the ModelRuntime gRPC server (cert_file + key_file; ca_file requires client
    certificates); what is unset comes from `MESHSERVE_INTERNAL_TLS__*` (unset there too: plaintext)."""
    advertise_address: str = ""
    """What the scheduler dials to reach this puller (default: `127.0.0.1:<listen port>`)."""
    health_port: int = 0
    """`/healthz` + `/readyz` (ready: serving ModelRuntime and reporting to the scheduler); 0 = off."""
    runtime: str = "mlserver-1.x"
    """The ServingRuntime this pod belongs to."""
    supported_formats: str = "sklearn:0,xgboost:1,lightgbm:3"
    """Model formats served, `name:version` comma-separated, all auto-selected."""
    protocol_versions: str = "grpc-v2"
    """Protocols of the model server (comma-separated)."""
    model_dir: Path = Path("/models")
    """Model files, one folder per model id."""
    storage_config_dir: Path = Path("/storage-config")
    """The `storage-config` secret, one JSON file per storage key."""
    pvc_mounts_dir: Path = Path("/pvc_mounts")
    """Where the PVCs of `pvc://` models are mounted, one folder per claim."""
    cache_dir: Path | None = None
    """The node model cache (see "Storage"), shared by its runtime pods; empty: off. Must be on the
    same mount as `model_dir`: files are hard links into it (else copies)."""
    cache_max_bytes: int = 20 << 30
    """Node cache size: LRU eviction of entries no model folder links."""
    cache_verify: Literal["full", "stat"] = "full"
    """Node cache: rehash every use (`full`), or only when a file's stat changed (`stat`)."""
    s3_endpoint: str = Field(default="", validation_alias=shared("s3_endpoint", "puller"))
    """S3 endpoint for storage keys without `endpoint_url`."""
    model_server_kind: str = "mlserver"
    """`mlserver`, `triton`, `ovms` (the controller sets it from the runtime's
    `builtInAdapter.serverType`), or `spi` (a runtime serving `mmesh.ModelRuntime` itself)."""
    model_server_backends_dir: Path | None = None
    """Triton: its backend folder; native backends found there are used, the python backend otherwise."""
    keras_converter_python: str = ""
    """Triton: an interpreter with tensorflow that converts Keras files to SavedModels (default:
    the puller's own python; local mode: `.venv-triton`'s)."""
    keras_converter_prestart: bool = False
    """Triton: start the Keras converter (one tensorflow process, ~0.5 GiB RSS, seconds of CPU to
    import) at pod start, so the first keras load does not wait for it; off, it starts at the first
    keras load and stays."""
    triton_prestart_formats: str = ""
    """Triton: formats (comma-separated, e.g. `onnx,pytorch`) whose python-backend frameworks one
    warm-up model imports at pod start, before the pod registers, so the first model of each format
    is measured without its framework's libraries; the warm-up's memory comes off the capacity the
    pod reports (all frameworks: ~780 MiB, 4.4 s). The controller sets it from the ServingRuntime
    annotation `meshserve.io/prestart-formats` (`all` = the runtime's auto-selected formats)."""
    model_server_grpc: str = "127.0.0.1:8001"
    """The pod's model server, gRPC."""
    model_server_rest: str = "http://127.0.0.1:8002"
    """The pod's model server, REST."""
    model_server_advertise_grpc: str = ""
    """The model server's gRPC address as routers dial it (default: `model_server_grpc`)."""
    model_server_advertise_rest: str = ""
    """The model server's REST address as routers dial it (default: `model_server_rest`)."""
    model_server_pid_file: Path | None = None
    """Measure the memory of this process tree."""
    model_server_metrics_url: str = ""
    """Else scrape `process_resident_memory_bytes` here."""
    model_server_process: str = ""
    """Else a regex on the model server's command line (`/proc/<pid>/cmdline`, arguments joined by
    spaces): the topmost, oldest match is measured with its tree (a pod with
    `shareProcessNamespace`, where a pid file cannot cross containers; the controller sets it per
    server kind)."""
    ovms_config_path: Path | None = None
    """OVMS: the config file OVMS reads (`--config_path`), rewritten by the puller (default:
    `<model_dir>/model_config_list.json`)."""
    model_server_endpoint: str = "port:8085"
    """SPI: the runtime's `grpcEndpoint` (`port:N`, `unix:<path>`, `host:port`); its runtimeStatus
    replaces capacity, loading concurrency, load timeout and default model size where it sets them."""
    storage_helper_disabled: bool = False
    """SPI: download nothing, pass the storage path and key to the runtime (`storageHelper.disabled`)."""
    capacity_bytes: int = 1 << 30
    """Memory for models on this pod."""
    max_loading_concurrency: int = 1
    """Loads at once on this pod (1 keeps size measurement clean)."""
    default_model_size_bytes: int = 1_000_000
    """The runtime's default model size: reserved for a model with no measured, declared or
    predicted size (the controller sets it from a ServingRuntime's `builtInAdapter.env`
    `DEFAULT_MODELSIZE`); shown by `GET /v1/runtimes`."""
    model_size_multiplier: float = 1.25
    """Size prediction = bytes on disk x this."""
    load_timeout_seconds: float = 90.0
    """Per load (download, load, measure)."""
    scheduler_address: str = Field(default="127.0.0.1:8034", validation_alias=shared("scheduler_address", "puller"))
    """The scheduler's internal gRPC endpoint."""
    scheduler_tls: InternalTLS = TLSSettings()
    """TLS of the calls to the scheduler; what is unset comes from `MESHSERVE_INTERNAL_TLS__*`."""
    heartbeat_interval_seconds: float = 2.0
    """Pod reports to the scheduler this often (until the scheduler's answer says otherwise)."""
    metrics_port: int = 0
    """The pod's Prometheus port, 0 = off (the controller sets `2112` from `metrics.port` when
    `metrics.enabled`)."""
    metrics_scheme: Literal["http", "https"] = "http"
    """How `metrics_port` is served: `https` uses the pod's certificate (`tls.cert_file` /
    `tls.key_file`), or without one a self-signed certificate generated at start-up (as upstream;
    scrape it with `insecureSkipVerify`). The controller sets it from the config's `metrics.scheme`,
    as upstream's `MM_METRICS` `scheme=https`."""
    limit_per_model_concurrency: int = Field(
        default=0, ge=0,
        validation_alias=AliasChoices(
            "MESHSERVE_PULLER_LIMIT_PER_MODEL_CONCURRENCY", "LIMIT_PER_MODEL_CONCURRENCY", "limit_per_model_concurrency"
        ),
    )
    """Requests each model copy on this pod serves at once; routers queue the rest (0 = no limit).
    The controller sets it from the ServingRuntime annotation `perModelConcurrencyLimit`
    (upstream's adapter env `LIMIT_PER_MODEL_CONCURRENCY`, also accepted)."""

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value in ("", None) else value
