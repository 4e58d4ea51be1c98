"""Router settings (env prefix MESHSERVE_ROUTER_)."""

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
    grpc_address: str = "0.0.0.0:8033"
    metrics_port: int = 2112
    scheduler_address: str = Field(default="127.0.0.1:8034", validation_alias=shared("scheduler_address", "router"))
    scheduler_tls: TLSSettings = TLSSettings()
    model_server_tls: TLSSettings = TLSSettings()
    tls: TLSSettings = TLSSettings()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    default_timeout_seconds: float = 120.0   # when the client sets no deadline
    usage_report_interval_seconds: float = 1.0
    log_level: str = "INFO"
    log_json: bool = False
