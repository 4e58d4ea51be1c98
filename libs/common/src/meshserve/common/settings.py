"""Settings shared by every service: the base class `ServiceSettings` and its pieces.

Owns what every service is configured with (log level and JSON logs, the Prometheus port, the TLS
of its gRPC server) and the rules all settings follow: each service has its own pydantic-settings
class deriving from `ServiceSettings` with prefix `MESHSERVE_<NAME>_`, nested values use `__`
(`MESHSERVE_PULLER_TLS__CERT_FILE`), and every field is documented by the attribute docstring
under it (`use_attribute_docstrings`): that text is the field's description, the one the README's
configuration table is generated from (`scripts/settings_table.py`). Tokens and passwords are
`SecretStr` and never shown there.

The addresses of shared infrastructure are also read from the unprefixed variables
`MESHSERVE_REDIS_URL`, `MESHSERVE_DATABASE_URL` and `MESHSERVE_S3_ENDPOINT` (`shared`), so one
export serves the whole stack.

May import pydantic and pydantic-settings only (no I/O: settings are read once in `__main__`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def shared(name: str, service: str) -> AliasChoices:
    """Accept MESHSERVE_<SERVICE>_<NAME> first, then MESHSERVE_<NAME>."""
    return AliasChoices(f"MESHSERVE_{service}_{name}".upper(), f"MESHSERVE_{name}".upper(), name.lower())


class TLSSettings(BaseModel):
    """TLS for one endpoint. Server side: cert + key (+ CA to require client certs).
    Client side: CA to verify the server (+ cert/key for mutual TLS)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    cert_file: Path | None = None
    """PEM certificate (server: its own; client: for mutual TLS)."""
    key_file: Path | None = None
    """PEM private key of `cert_file`."""
    ca_file: Path | None = None
    """PEM CA bundle (server: require client certificates signed by it; client: verify the server)."""

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None or self.ca_file is not None


class ServiceSettings(BaseSettings):
    """What every service is configured with; a service's settings class derives from it and
    sets its own `env_prefix` (`SettingsConfigDict(env_prefix="MESHSERVE_PULLER_")`)."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="__", populate_by_name=True, use_attribute_docstrings=True
    )

    log_level: str = "INFO"
    """Root log level (DEBUG, INFO, WARNING, ERROR)."""
    log_json: bool = False
    """JSON log lines (python-json-logger) instead of text; secrets are masked either way."""
    metrics_port: int = 2112
    """Prometheus metrics port (0 = off)."""
    tls: TLSSettings = TLSSettings()
    """TLS of the service's gRPC server (unset: plaintext)."""


def redact(value: SecretStr | str | None) -> str:
    return "" if value is None else "**********"


__all__ = ["Field", "SecretStr", "ServiceSettings", "TLSSettings", "redact", "shared"]
