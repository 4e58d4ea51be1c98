"""Fetching model files: the storage-config secret and the storage types it names.

Follows ModelMesh's puller: the request's model key names a storage key (or falls back
to `default` / `default_<type>`), its `storage_params` override the secret's fields,
and the files land in `<model_dir>/<model id>/`. Every local path is built with
`safe_join`, so neither a model path nor an object key can write outside that folder.
Blocking I/O (SDK calls, file copies) runs in a worker thread, never on the event loop.
Secrets are read into memory only; they never reach a log line or an error message.

One module per storage type: `storage_s3` (boto3), `storage_gcs`, `storage_azure`,
`storage_http`, `storage_pvc` (symlinks, no copy); `storage_sync` holds the download loop
the object stores share (`sync_objects`, re-exported here) and `storage_tls` the PEM
handling of `certificate` / `client_certificate` / `client_key`. GCS and Azure are
imported on first use: their SDKs cost ~0.4-0.5 s each to import and most pullers need
neither.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshserve.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from meshserve.common.logging import register_secret
from meshserve.common.storage import safe_join
from meshserve.puller import storage_http, storage_pvc, storage_s3
from meshserve.puller.model_cache import ModelCache
from meshserve.puller.storage_sync import MANIFEST, RemoteObject, local_names, sync_objects

__all__ = [
    "MANIFEST", "RemoteObject", "StorageConfig", "check_config", "fetch", "load_storage_config", "local_names",
    "predict_size",
    "sync_objects",
]

log = logging.getLogger(__name__)
TYPES = ("s3", "gcs", "azure", "http", "pvc", "file")


@dataclass(frozen=True)
class StorageConfig:
    type: str
    fields: dict[str, Any]
    key: str | None = None
    """The storage-config key the fields came from (None: storage_params only); errors name it."""

    def __repr__(self) -> str:  # never print credentials
        return f"StorageConfig(type={self.type!r}, key={self.key!r}, fields=<{len(self.fields)} keys>)"


def load_storage_config(config_dir: Path, key: str | None, params: dict[str, Any]) -> StorageConfig:
    """Resolve the storage configuration for one model (ModelMesh puller rules)."""
    fields: dict[str, Any] = {}
    used = key or None
    if key:
        path = _key_path(config_dir, key)
        if path is None:
            raise FailedPrecondition(f"Did not find storage config for key {key}: Storage secretKey not found: {key}")
        fields = _read_json(path, key)
    else:
        for candidate in (f"default_{params['type']}" if params.get("type") else None, "default"):
            if candidate and (path := _key_path(config_dir, candidate)) is not None:
                fields = _read_json(path, candidate)
                used = candidate
                break
    if "bucket" not in fields and "default_bucket" in fields:
        fields["bucket"] = fields["default_bucket"]
    for secret in ("secret_access_key", "access_key_id", "password", "private_key", "connection_string",
                   "account_key", "client_secret", "client_key"):
        register_secret(str(fields.get(secret, "")) or None)
    _register_connection_string_secrets(str(fields.get("connection_string", "")))
    fields.update({k: v for k, v in params.items() if v not in (None, "")})
    if not fields.get("type"):
        raise FailedPrecondition("Predictor Storage field missing")
    return StorageConfig(type=str(fields["type"]), fields=fields, key=used)


def _register_connection_string_secrets(connection_string: str) -> None:
    """An Azure connection string carries its key (or SAS token) as one `Name=value` part;
    register that part too, so a message quoting only the key is still masked."""
    for part in connection_string.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip().lower() in ("accountkey", "sharedaccesssignature"):
            register_secret(value.strip())


def _key_path(config_dir: Path, key: str) -> Path | None:
    try:
        path = safe_join(config_dir, key)
    except InvalidArgument:
        return None
    return path if path.is_file() else None


def _read_json(path: Path, key: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FailedPrecondition(f"storage config {key!r} is not valid JSON") from err
    if not isinstance(data, dict):
        raise FailedPrecondition(f"storage config {key!r} must be a JSON object")
    return data


def fetch(cfg: StorageConfig, *, path: str, dest: Path, pvc_mounts: Path, cache: ModelCache | None = None) -> int:
    """Download (or, for a PVC, link) `path` into the folder `dest`; returns the bytes of
    the model's files. Blocking. Our errors are prefixed with the storage key's name.
    With `cache` (the node's shared `ModelCache`), the object stores' files are hard links
    to its entries, downloaded only when the node has none; http, file and pvc ignore it."""
    try:
        return _fetch(cfg, path=path, dest=dest, pvc_mounts=pvc_mounts, cache=cache)
    except (FailedPrecondition, InvalidArgument, Unavailable) as err:
        if cfg.key is None:
            raise
        raise type(err)(f"storage key {cfg.key!r}: {err.message}") from err


def _fetch(cfg: StorageConfig, *, path: str, dest: Path, pvc_mounts: Path, cache: ModelCache | None) -> int:
    if cfg.type == "pvc":
        return storage_pvc.link(pvc_mounts, claim=str(cfg.fields.get("name") or ""), path=path, dest=dest)
    _check_type(cfg)
    dest.mkdir(parents=True, exist_ok=True)
    if cfg.type == "s3":
        return storage_s3.fetch(cfg.fields, path=path, dest=dest, cache=cache)
    if cfg.type == "file":
        return _copy_local(Path(path), dest)
    if cfg.type == "http":
        return storage_http.fetch(cfg.fields, path=path, dest=dest)
    return int(_provider(cfg.type).fetch(cfg.fields, path=path, dest=dest, cache=cache))


def check_config(cfg: StorageConfig, *, path: str, pvc_mounts: Path) -> None:
    """Check the fields of `cfg` as `fetch` does before its first request (the SDK client is
    built, nothing is sent; a PVC's files are looked at): FailedPrecondition or
    InvalidArgument, prefixed with the storage key's name as `fetch`'s errors, never quoting
    a credential."""
    try:
        _check_config(cfg, path=path, pvc_mounts=pvc_mounts)
    except (FailedPrecondition, InvalidArgument) as err:
        if cfg.key is None:
            raise
        raise type(err)(f"storage key {cfg.key!r}: {err.message}") from err


def _check_config(cfg: StorageConfig, *, path: str, pvc_mounts: Path) -> None:
    if cfg.type == "pvc":
        storage_pvc.plan(pvc_mounts, claim=str(cfg.fields.get("name") or ""), path=path)
        return
    _check_type(cfg)
    if cfg.type == "s3":
        storage_s3.client_for(cfg.fields)
    elif cfg.type == "http":
        storage_http.check(cfg.fields, path=path)
    elif cfg.type in ("gcs", "azure"):
        _provider(cfg.type).check(cfg.fields, path=path)


def predict_size(cfg: StorageConfig, *, path: str, pvc_mounts: Path | None = None) -> int:
    """Bytes the files take in storage, without downloading them (0 if unknown).
    A broken configuration still raises FailedPrecondition; a storage error, or a type
    that cannot be sized (http, file, an unknown one: `fetch` reports it), gives 0."""
    if cfg.type == "s3":
        return storage_s3.predict_size(cfg.fields, path=path)
    if cfg.type in ("gcs", "azure"):
        return int(_provider(cfg.type).predict_size(cfg.fields, path=path))
    if cfg.type == "pvc" and pvc_mounts is not None:
        try:
            return storage_pvc.size(pvc_mounts, claim=str(cfg.fields.get("name") or ""), path=path)
        except FailedPrecondition:
            return 0
    return 0


def _check_type(cfg: StorageConfig) -> None:
    if cfg.type not in TYPES:
        raise FailedPrecondition(
            f"storage type {cfg.type!r} is not supported by this puller ({', '.join(TYPES)}); "
            "check the storage config field 'type'"
        )


def _provider(kind: str) -> Any:
    """`storage_gcs` / `storage_azure`, imported on first use (their SDKs are slow to import)."""
    sdk = {"gcs": "google-cloud-storage", "azure": "azure-storage-blob"}[kind]
    try:
        return importlib.import_module(f"meshserve.puller.storage_{kind}")
    except ImportError as err:
        raise FailedPrecondition(f"storage type {kind!r} needs the Python package {sdk}, which is not installed") from err


def _copy_local(source: Path, dest: Path) -> int:
    if not source.exists():
        raise FailedPrecondition(f"model path {source} does not exist")
    if source.is_file():
        shutil.copy2(source, dest / source.name)
        return source.stat().st_size
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
