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

Internal TLS: every service also reads the unprefixed block `MESHSERVE_INTERNAL_TLS__CERT_FILE`,
`__KEY_FILE`, `__CA_FILE` (and `__SERVER_NAME`) into `ServiceSettings.internal_tls`. When it is set,
each field a service declares as `InternalTLS` (the scheduler's and the pullers' gRPC servers, the
router's, pullers' and controller's calls to the scheduler, the scheduler's calls to the pullers)
takes every file it leaves unset from it (`TLSSettings.inherit`): one export puts every internal
gRPC hop on mutual TLS, and an endpoint's own `..._TLS__*` variables still win. The router's front
doors (`MESHSERVE_ROUTER_TLS__*`) and its calls to model servers are not internal and never inherit.

May import pydantic and pydantic-settings only (no I/O: settings are read once in `__main__`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
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
    server_name: str | None = None
    """Client: the name the server's certificate must carry, instead of the host dialed (gRPC's
    `ssl_target_name_override`), for peers dialed by IP, such as runtime pods."""

    @model_validator(mode="after")
    def _cert_with_key(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            raise ValueError(f"TLS {given} is set without {missing}: a certificate needs its private key (set both, or neither)")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None or self.ca_file is not None

    def inherit(self, default: TLSSettings) -> TLSSettings:
        """This endpoint's TLS with what it leaves unset taken from `default`: the certificate
        and its key as a pair, the CA and the server name each on their own."""
        own_pair = self.cert_file is not None
        return TLSSettings(
            cert_file=self.cert_file if own_pair else default.cert_file,
            key_file=self.key_file if own_pair else default.key_file,
            ca_file=self.ca_file if self.ca_file is not None else default.ca_file,
            server_name=self.server_name if self.server_name is not None else default.server_name,
        )


class _Internal:
    """Marks a `TLSSettings` field as an internal hop (see `InternalTLS`)."""

    def __repr__(self) -> str:
        return "internal"


INTERNAL = _Internal()
InternalTLS = Annotated[TLSSettings, INTERNAL]
"""The type of a TLS field of an internal gRPC hop: it inherits `ServiceSettings.internal_tls`."""


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
    internal_tls: TLSSettings = Field(
        default=TLSSettings(), validation_alias=AliasChoices("MESHSERVE_INTERNAL_TLS", "internal_tls")
    )
    """Mesh-wide TLS of every internal gRPC hop (the scheduler's and the pullers' gRPC servers;
    router, puller and controller -> scheduler; scheduler -> puller), from the same unprefixed
    variables in every service. Each internal endpoint takes what its own `..._TLS__*` variables
    leave unset from here (the cert and key as a pair). `CERT_FILE` + `KEY_FILE` (both required
    when the block is used) are what a server presents and what a client presents for mutual TLS,
    so the certificate needs both the serverAuth and clientAuth usages (or none) and the names
    clients dial (or set `SERVER_NAME`); `CA_FILE` verifies servers and, on servers, requires
    client certificates signed by it (mutual TLS). Unset: internal hops are plaintext. The router's
    front doors and model-server calls are not internal."""

    @model_validator(mode="after")
    def _inherit_internal_tls(self) -> Self:
        internal = self.internal_tls
        if not internal.enabled and internal.server_name is None:
            return self
        if internal.cert_file is None:
            raise ValueError(
                "MESHSERVE_INTERNAL_TLS__CERT_FILE and MESHSERVE_INTERNAL_TLS__KEY_FILE are required when "
                "MESHSERVE_INTERNAL_TLS__* is used: the internal gRPC servers present that certificate"
            )
        for name, field in type(self).model_fields.items():
            if any(marker is INTERNAL for marker in field.metadata):
                setattr(self, name, getattr(self, name).inherit(internal))
        return self


def redact(value: SecretStr | str | None) -> str:
    return "" if value is None else "**********"


__all__ = ["INTERNAL", "Field", "InternalTLS", "SecretStr", "ServiceSettings", "TLSSettings", "redact", "shared"]
