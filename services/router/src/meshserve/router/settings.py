"""Router settings (env prefix MESHSERVE_ROUTER_, nested with `__`, e.g. MESHSERVE_ROUTER_TLS__CERT_FILE)."""

from __future__ import annotations

import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshserve.common.grpcutil import DEFAULT_MAX_MESSAGE_BYTES
from meshserve.common.settings import TLSSettings, shared


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MESHSERVE_ROUTER_", env_nested_delimiter="__", populate_by_name=True
    )

    router_id: str = Field(default_factory=socket.gethostname)
    """Names this router in the scheduler's route stream and usage reports."""
    grpc_address: str = "0.0.0.0:8033"
    """KServe v2 gRPC front door (`inference.GRPCInferenceService`)."""
    rest_host: str = "0.0.0.0"
    """Interface of the KServe v2 REST front door."""
    rest_port: int = 8008
    """KServe v2 REST front door, also /healthz, /readyz and /metrics. 0 turns it off."""
    metrics_port: int = 2112
    """Separate Prometheus port (0: off; /metrics on the REST port is always there)."""
    scheduler_address: str = Field(default="127.0.0.1:8034", validation_alias=shared("scheduler_address", "router"))
    scheduler_tls: TLSSettings = TLSSettings()
    model_server_tls: TLSSettings = TLSSettings()
    tls: TLSSettings = TLSSettings()
    """Server TLS for both front doors (cert_file + key_file; ca_file requires client certificates)."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    default_timeout_seconds: float = 120.0
    """Budget of a request whose client set no deadline (and the cap on any deadline)."""
    rest_max_connections: int = 512
    """Pooled keep-alive connections to the model servers' REST ports."""
    usage_report_interval_seconds: float = 1.0
    route_fallback_seconds: float = 30.0
    """How long a route that a snapshot from the scheduler left out is still used when there
    is no other (0: off). Such a snapshot follows a restart of the scheduler's Redis, before
    the pods report their models again (a heartbeat, 2 s) and the registry mirror is rebuilt
    (2 s); 30 s also covers a slow Redis start and is twice the scheduler's pod timeout, after
    which a silent pod is dropped anyway. A forward that fails there asks the scheduler."""
    log_level: str = "INFO"
    log_json: bool = False
