"""The `storage-config` Secret: one JSON object per storage key, parsed without I/O.

Owns: decoding the Secret's data into `StorageEntry` values, applying upstream's alias rule
(`default_bucket` is copied to `bucket` only when `bucket` is absent), and telling apart the
fields that are safe to show (type, bucket, endpoint, region, PVC name, ...) from credentials.

Must never: log, format or put into a CR status any credential. `StorageEntry.__repr__` and
`describe()` show only public fields; the credential values are reachable only through
`credentials()`, which callers pass straight to the puller (via the mounted Secret) and nowhere else.
A key whose value is not a JSON object is reported by key name only, never by content.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PUBLIC_FIELDS = frozenset(
    {"type", "bucket", "endpoint_url", "endpoint", "region", "account_name", "container", "url", "name", "client_email",
     "token_uri", "tenant_id", "client_id", "authority_host"}
)
"""Fields whose values may appear in logs and status. Everything else is treated as a credential."""


@dataclass(frozen=True)
class StorageEntry:
    key: str
    type: str
    public: Mapping[str, str] = field(default_factory=dict)
    _secret: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def credentials(self) -> Mapping[str, Any]:
        """The credential fields. Never log or serialise the result."""
        return self._secret

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.public.items()))
        hidden = f" (+{len(self._secret)} credential field(s))" if self._secret else ""
        return f"{self.key}: {shown}{hidden}"

    def __repr__(self) -> str:
        return f"StorageEntry({self.describe()})"


@dataclass(frozen=True)
class StorageConfig:
    entries: Mapping[str, StorageEntry] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    """storage key -> why its value was rejected (never the value itself)."""

    def pvc_names(self) -> tuple[str, ...]:
        """PVCs named by `type: pvc` entries: mounted read-only into every runtime pod (upstream)."""
        return tuple(sorted({e.public["name"] for e in self.entries.values() if e.type == "pvc" and e.public.get("name")}))

    def get(self, key: str) -> StorageEntry | None:
        return self.entries.get(key)


def _decode(value: str | bytes, *, base64_encoded: bool) -> str:
    raw = value if isinstance(value, bytes) else value.encode()
    if base64_encoded:
        raw = base64.b64decode(raw, validate=True)
    return raw.decode("utf-8")


def parse_storage_secret(data: Mapping[str, str | bytes] | None, *, base64_encoded: bool = True) -> StorageConfig:
    """Parse a Secret's `data` (base64 values, as the API returns them) or decoded values.

    Args:
        data: the Secret's data map; None when the Secret does not exist.
        base64_encoded: True for `data` as read from the API, False for plain strings (stringData,
            local mode files).
    """
    entries: dict[str, StorageEntry] = {}
    errors: dict[str, str] = {}
    for key, value in (data or {}).items():
        try:
            obj = json.loads(_decode(value, base64_encoded=base64_encoded))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            errors[key] = "value is not valid (base64-encoded) JSON"
            continue
        if not isinstance(obj, dict):
            errors[key] = "value must be a JSON object"
            continue
        obj = dict(obj)
        if "bucket" not in obj and "default_bucket" in obj:
            obj["bucket"] = obj["default_bucket"]
        obj.pop("default_bucket", None)
        kind = obj.get("type")
        if not isinstance(kind, str) or not kind:
            errors[key] = "missing the 'type' field (s3, gcs, azure, http or pvc)"
            continue
        public = {k: str(v) for k, v in obj.items() if k in PUBLIC_FIELDS and isinstance(v, (str, int, float))}
        secret = {k: v for k, v in obj.items() if k not in PUBLIC_FIELDS}
        entries[key] = StorageEntry(key=key, type=kind, public=public, _secret=secret)
    return StorageConfig(entries=entries, errors=errors)
