"""Settings shared by every service.

Each service has its own pydantic-settings class with prefix `MESHSERVE_<NAME>_`.
The addresses of shared infrastructure are also read from the unprefixed variables
`MESHSERVE_REDIS_URL`, `MESHSERVE_DATABASE_URL` and `MESHSERVE_S3_ENDPOINT`, so one
export serves the whole stack.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr


def shared(name: str, service: str) -> AliasChoices:
    """Accept MESHSERVE_<SERVICE>_<NAME> first, then MESHSERVE_<NAME>."""
    return AliasChoices(f"MESHSERVE_{service}_{name}".upper(), f"MESHSERVE_{name}".upper(), name.lower())


class TLSSettings(BaseModel):
    """TLS for one endpoint. Server side: cert + key (+ CA to require client certs).
    Client side: CA to verify the server (+ cert/key for mutual TLS)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None or self.ca_file is not None


def redact(value: SecretStr | str | None) -> str:
    return "" if value is None else "**********"


__all__ = ["Field", "SecretStr", "TLSSettings", "redact", "shared"]
