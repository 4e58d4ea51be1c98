"""Storage locations: parsing storage URIs and keeping local paths inside their folder.

Pure functions. `parse_storage_uri` follows ModelMesh Serving's conversion of an
InferenceService `storageUri` into a path plus storage parameters (URI-derived
parameters override explicitly given ones). `safe_join` is the one place that turns
an untrusted relative path into a local path; it refuses anything that would leave
the base folder (`..`, absolute paths, symlinks pointing out).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from meshserve.common.errors import InvalidArgument


@dataclass(frozen=True)
class StorageLocation:
    """Where a model's files are: a storage type, its parameters and a path inside it."""

    type: str
    path: str
    params: dict[str, str] = field(default_factory=dict)


def parse_storage_uri(uri: str, params: dict[str, str] | None = None) -> StorageLocation:
    """Split `uri` into (type, path, params). Raises InvalidArgument when unsupported."""
    merged = dict(params or {})
    if not uri:
        raise InvalidArgument("storage URI is empty: give s3://bucket/path, pvc://name/path or https://...")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    path = parts.path.lstrip("/")
    if scheme == "s3" or scheme == "gs":
        if not parts.netloc:
            raise InvalidArgument(f"storage URI {uri!r} has no bucket (expected {scheme}://bucket/path)")
        merged.update(type="s3" if scheme == "s3" else "gcs", bucket=parts.netloc)
        _require_path(uri, path)
        return StorageLocation(type=merged["type"], path=path, params=merged)
    if scheme == "pvc":
        if not parts.netloc:
            raise InvalidArgument(f"storage URI {uri!r} has no claim name (expected pvc://name/path)")
        merged.update(type="pvc", name=parts.netloc)
        _require_path(uri, path)
        return StorageLocation(type="pvc", path=path, params=merged)
    if scheme in ("http", "https"):
        host = parts.hostname or ""
        if host.endswith(".blob.core.windows.net"):
            container, _, rest = path.partition("/")
            merged.update(type="azure", account_name=host.split(".")[0], container=container)
            _require_path(uri, rest)
            return StorageLocation(type="azure", path=rest, params=merged)
        merged.update(type="http", url=urlunsplit((parts.scheme, parts.netloc, "", parts.query, "")))
        _require_path(uri, path)
        return StorageLocation(type="http", path=path, params=merged)
    if scheme == "file":
        # local mode only: a path on the puller's machine (the equivalent of a PVC)
        merged.update(type="file")
        return StorageLocation(type="file", path=parts.path, params=merged)
    raise InvalidArgument(f"unsupported storageUri scheme in {uri!r}: use s3://, gs://, pvc://, http(s):// or file://")


def _require_path(uri: str, path: str) -> None:
    if not path or path in (".", "/"):
        raise InvalidArgument(f"storage URI {uri!r} names no object path")


def safe_join(base: Path, relative: str) -> Path:
    """Join `relative` under `base`; refuse any result outside `base`.

    Raises InvalidArgument for absolute paths, `..` escapes and symlinks that resolve
    outside the base folder.
    """
    if "\x00" in relative:
        raise InvalidArgument("path may not contain NUL bytes")
    rel = PurePosixPath(relative)
    if rel.is_absolute() or relative.startswith("\\"):
        raise InvalidArgument(f"path {relative!r} must be relative")
    if any(part == ".." for part in rel.parts):
        raise InvalidArgument(f"path {relative!r} may not contain '..'")
    base_resolved = base.resolve()
    candidate = (base_resolved / Path(*rel.parts)) if rel.parts else base_resolved
    resolved = Path(os.path.realpath(candidate))
    if resolved != base_resolved and base_resolved not in resolved.parents:
        raise InvalidArgument(f"path {relative!r} leaves the model directory")
    return candidate


def check_model_id(model_id: str) -> str:
    """A model id becomes a folder name: allow only a safe character set."""
    if not model_id or len(model_id) > 253:
        raise InvalidArgument("model id must be 1..253 characters")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    bad = sorted(set(model_id) - allowed)
    if bad or model_id in (".", "..") or model_id.startswith("."):
        raise InvalidArgument(
            f"model id {model_id!r} may only use letters, digits, '-', '_' and '.', and may not start with '.'"
        )
    return model_id
