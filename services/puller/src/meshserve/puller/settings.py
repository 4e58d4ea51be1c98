"""Puller settings (env prefix MESHSERVE_PULLER_)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshserve.common.settings import TLSSettings, shared


class PullerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MESHSERVE_PULLER_", env_nested_delimiter="__", populate_by_name=True
    )

    pod_id: str = Field(default_factory=socket.gethostname)
    listen_address: str = "0.0.0.0:8085"
    # what the scheduler should dial to reach this puller and the model server
    advertise_address: str = ""                  # default: 127.0.0.1:<listen port>
    runtime: str = "mlserver-1.x"
    supported_formats: str = "sklearn:0,xgboost:1,lightgbm:3"   # name:version, all auto-selected
    protocol_versions: str = "grpc-v2"
    model_dir: Path = Path("/models")
    storage_config_dir: Path = Path("/storage-config")
    pvc_mounts_dir: Path = Path("/pvc_mounts")
    # the node's model-file cache, shared by its runtime pods (model_cache); empty: off. Must
    # be on the same mount as model_dir: files are hard links into it (else copies)
    cache_dir: Path | None = None
    cache_max_bytes: int = 20 << 30              # LRU eviction of entries no model folder links
    cache_verify: Literal["full", "stat"] = "full"  # rehash every use, or only when stat changed
    s3_endpoint: str = Field(default="", validation_alias=shared("s3_endpoint", "puller"))
    # the model server: "mlserver" or "triton"
    model_server_kind: str = "mlserver"
    model_server_backends_dir: Path | None = None  # Triton: its backends (native ones are used when present)
    keras_converter_python: str = ""              # Triton: a python with tensorflow for Keras files (default: this one)
    keras_converter_prestart: bool = False        # Triton: import tensorflow at pod start, not at the first keras load
    # Triton: formats whose python-backend framework one warm-up model imports at pod start,
    # before the pod registers, so the first model of each format is not charged the
    # framework's libraries (comma-separated, e.g. "onnx,pytorch,tensorflow,openvino_ir")
    triton_prestart_formats: str = ""
    model_server_grpc: str = "127.0.0.1:8001"
    model_server_rest: str = "http://127.0.0.1:8002"
    model_server_advertise_grpc: str = ""        # default: model_server_grpc
    model_server_advertise_rest: str = ""
    model_server_pid_file: Path | None = None    # measure memory of this process tree
    model_server_metrics_url: str = ""           # else scrape process_resident_memory_bytes here
    # else find the model server's process: a regex on /proc/<pid>/cmdline (arguments joined by
    # spaces); the topmost, oldest match is measured with its tree. For a pod with
    # shareProcessNamespace, where a pid file cannot cross containers
    model_server_process: str = ""
    # kind "ovms": the config file OVMS reads (its --config_path), which the puller rewrites;
    # default <model_dir>/model_config_list.json (upstream's /models/model_config_list.json)
    ovms_config_path: Path | None = None
    # kind "spi": a runtime that serves ModelMesh's mmesh.ModelRuntime itself (its grpcEndpoint:
    # port:<n>, unix:<path> or host:port); its runtimeStatus replaces capacity_bytes,
    # max_loading_concurrency, load_timeout_seconds and default_model_size_bytes where it sets them
    model_server_endpoint: str = "port:8085"
    # ServingRuntime storageHelper.disabled: download nothing; the runtime gets the storage path
    # and the model key as registered (storage_key, storage_params) and fetches the files itself
    storage_helper_disabled: bool = False
    capacity_bytes: int = 1 << 30                # memory for models on this pod
    max_loading_concurrency: int = 1
    default_model_size_bytes: int = 1_000_000
    model_size_multiplier: float = 1.25          # prediction = bytes on disk x this
    load_timeout_seconds: float = 90.0
    scheduler_address: str = Field(default="127.0.0.1:8034", validation_alias=shared("scheduler_address", "puller"))
    scheduler_tls: TLSSettings = TLSSettings()
    tls: TLSSettings = TLSSettings()
    heartbeat_interval_seconds: float = 2.0
    metrics_port: int = 0
    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value in ("", None) else value
