"""Controller settings (env prefix MESHSERVE_CONTROLLER_; the scheduler address also from MESHSERVE_SCHEDULER_ADDRESS)."""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshserve.common.settings import TLSSettings, shared


class Mode(enum.StrEnum):
    KUBERNETES = "kubernetes"
    """Watch the CRs through the Kubernetes API; runtimes are Deployments."""
    LOCAL = "local"
    """Resources come from the local store (`meshserve apply -f`); runtimes per `runtime_provider`."""


class RuntimeProvider(enum.StrEnum):
    KUBERNETES = "kubernetes"
    PROCESS = "process"
    """Local mode: start MLServer + puller processes on this machine."""
    STATIC = "static"
    """Runtime pods are run by someone else (docker compose); never start or stop them."""


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MESHSERVE_CONTROLLER_", env_nested_delimiter="__", populate_by_name=True
    )

    mode: Mode = Mode.KUBERNETES
    """Where resources come from."""
    runtime_provider: RuntimeProvider = RuntimeProvider.KUBERNETES
    """Who runs runtime pods."""
    namespace: str = "modelmesh-serving"
    """Namespace whose InferenceServices, Predictors and ServingRuntimes are served (namespace-scope mode)."""
    config_map_name: str = "model-serving-config"
    """The user ConfigMap (key config.yaml), read from `namespace`."""
    scheduler_address: str = Field(default="127.0.0.1:8034", validation_alias=shared("scheduler_address", "controller"))
    """The scheduler's internal gRPC endpoint."""
    scheduler_tls: TLSSettings = TLSSettings()
    scheduler_timeout_seconds: float = 10.0
    """Deadline of each scheduler call (upstream GrpcRequestTimeout)."""
    kubeconfig: Path | None = None
    """Out-of-cluster: a kubeconfig file; in-cluster config is used when unset."""
    watch_timeout_seconds: int = 300
    """Server-side timeout of one watch request; the watch is re-opened from the last resourceVersion."""
    health_port: int = 8081
    metrics_port: int = 2112
    log_level: str = "INFO"
    log_json: bool = False
