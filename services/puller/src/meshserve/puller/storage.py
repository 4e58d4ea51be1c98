"""Fetching model files: the storage-config secret, S3 (boto3), GCS, Azure Blob,
local/PVC paths, HTTP.

Follows ModelMesh's puller: the request's model key names a storage key (or falls back
to `default` / `default_<type>`), its `storage_params` override the secret's fields,
and the files land in `<model_dir>/<model id>/`. Every local path is built with
`safe_join`, so neither a model path nor an object key can write outside that folder.
Blocking I/O (SDK calls, file copies) runs in a worker thread, never on the event loop.
Secrets are read into memory only; they never reach a log line or an error message.

The object stores share one download loop, `sync_objects`: a provider lists what is at
the model path (`RemoteObject`s), the loop maps every key to a local path first (so a
key that would escape refuses the whole fetch before any byte is written), skips files
whose version tag is unchanged in the manifest, and downloads the rest to `.part` files
that are renamed into place. GCS (`storage_gcs`) and Azure (`storage_azure`) are imported
on first use: their SDKs cost ~0.4-0.5 s each to import and most pullers need neither.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
import httpx
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from meshserve.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from meshserve.common.logging import register_secret
from meshserve.common.storage import safe_join

log = logging.getLogger(__name__)
MANIFEST = ".meshserve-files.json"


@dataclass(frozen=True)
class StorageConfig:
    type: str
    fields: dict[str, Any]

    def __repr__(self) -> str:  # never print credentials
        return f"StorageConfig(type={self.type!r}, fields=<{len(self.fields)} keys>)"


def load_storage_config(config_dir: Path, key: str | None, params: dict[str, Any]) -> StorageConfig:
    """Resolve the storage configuration for one model (ModelMesh puller rules)."""
    fields: dict[str, Any] = {}
    if key:
        path = _key_path(config_dir, key)
        if path is None:
            raise FailedPrecondition(f"Did not find storage config for key {key}: Storage secretKey not found: {key}")
        fields = _read_json(path, key)
    else:
        for candidate in (f"default_{params['type']}" if params.get("type") else None, "default"):
            if candidate and (path := _key_path(config_dir, candidate)) is not None:
                fields = _read_json(path, candidate)
                break
    if "bucket" not in fields and "default_bucket" in fields:
        fields["bucket"] = fields["default_bucket"]
    for secret in ("secret_access_key", "access_key_id", "password", "private_key", "connection_string",
                   "account_key", "client_secret"):
        register_secret(str(fields.get(secret, "")) or None)
    _register_connection_string_secrets(str(fields.get("connection_string", "")))
    fields.update({k: v for k, v in params.items() if v not in (None, "")})
    if not fields.get("type"):
        raise FailedPrecondition("Predictor Storage field missing")
    return StorageConfig(type=str(fields["type"]), fields=fields)


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


def fetch(cfg: StorageConfig, *, path: str, dest: Path, pvc_mounts: Path) -> int:
    """Download `path` into the folder `dest`; returns the bytes on disk. Blocking."""
    dest.mkdir(parents=True, exist_ok=True)
    if cfg.type == "s3":
        return _fetch_s3(cfg, path=path, dest=dest)
    if cfg.type in ("pvc", "file"):
        base = Path("/") if cfg.type == "file" else safe_join(pvc_mounts, str(cfg.fields.get("name", "")))
        source = safe_join(base, path.lstrip("/")) if cfg.type == "pvc" else Path(path)
        return _copy_local(source, dest)
    if cfg.type == "gcs":
        return int(_provider("gcs").fetch(cfg.fields, path=path, dest=dest))
    if cfg.type == "azure":
        return int(_provider("azure").fetch(cfg.fields, path=path, dest=dest))
    if cfg.type == "http":
        return _fetch_http(cfg, path=path, dest=dest)
    raise FailedPrecondition(
        f"storage type {cfg.type!r} is not supported by this puller (s3, gcs, azure, pvc, file, http)"
    )


def predict_size(cfg: StorageConfig, *, path: str) -> int:
    """Bytes the files take in storage, without downloading them (0 if unknown).
    A broken configuration still raises FailedPrecondition; a storage error gives 0."""
    if cfg.type == "gcs":
        return int(_provider("gcs").predict_size(cfg.fields, path=path))
    if cfg.type == "azure":
        return int(_provider("azure").predict_size(cfg.fields, path=path))
    if cfg.type != "s3":
        return 0
    client, bucket = _s3(cfg)
    try:
        return sum(obj.size for obj in _s3_objects(client, bucket, path))
    except (ClientError, BotoCoreError):
        return 0


def _provider(kind: str) -> Any:
    """`storage_gcs` / `storage_azure`, imported on first use (their SDKs are slow to import)."""
    sdk = {"gcs": "google-cloud-storage", "azure": "azure-storage-blob"}[kind]
    try:
        return importlib.import_module(f"meshserve.puller.storage_{kind}")
    except ImportError as err:
        raise FailedPrecondition(f"storage type {kind!r} needs the Python package {sdk}, which is not installed") from err


@dataclass(frozen=True)
class RemoteObject:
    """One object found at a model path in an object store."""

    key: str
    """The object's full key (name) in its bucket or container."""
    size: int
    version: str
    """A tag that changes whenever the bytes do (ETag, MD5, generation); kept in the manifest."""


def local_names(objects: Sequence[RemoteObject], *, path: str) -> list[str]:
    """The relative path under the model folder of each object (same order).

    One object whose key is exactly `path` is a single-file model and keeps its base
    name; otherwise every key lies under `path/` and keeps its tree below it. Not yet
    checked: a key such as `p/../../x` gives `../../x`, which `safe_join` then refuses.
    """
    key = path.lstrip("/")
    if len(objects) == 1 and objects[0].key == key:
        names = [PurePosixPath(key).name]
    else:
        prefix = key.rstrip("/")
        names = [str(PurePosixPath(obj.key).relative_to(prefix)) if prefix else obj.key for obj in objects]
    return [name if name not in ("", ".") else "_model" for name in names]


def sync_objects(
    objects: Sequence[RemoteObject],
    *,
    path: str,
    dest: Path,
    download: Callable[[RemoteObject, Path], None],
) -> int:
    """Bring `dest` up to date with `objects`; returns their total size. Blocking.

    Every local path is checked before the first download, so a bad key writes nothing.
    A file already on disk with the same size and manifest version is left untouched.
    `download(obj, tmp)` writes the object's bytes to `tmp` and raises our own errors
    (FailedPrecondition / Unavailable); the manifest keeps what finished either way.
    """
    names = local_names(objects, path=path)
    targets = [safe_join(dest, name) for name in names]
    manifest = _read_manifest(dest)
    total = 0
    try:
        for obj, name, target in zip(objects, names, targets, strict=True):
            total += obj.size
            if target.is_file() and target.stat().st_size == obj.size and manifest.get(name) == obj.version:
                continue  # already on disk and unchanged
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            try:
                download(obj, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(target)
            manifest[name] = obj.version
    finally:
        (dest / MANIFEST).write_text(json.dumps(manifest))
    return total


def _s3(cfg: StorageConfig) -> tuple[Any, str]:
    f = cfg.fields
    bucket = f.get("bucket")
    if not bucket:
        raise FailedPrecondition("required configuration 'bucket' missing from command")
    client = _s3_client(
        f.get("endpoint_url") or None, f.get("access_key_id") or None, f.get("secret_access_key") or None,
        f.get("region") or "us-east-1", f.get("certificate_file", True),
    )
    return client, str(bucket)


@functools.lru_cache(maxsize=32)
def _s3_client(endpoint: str | None, key_id: str | None, secret: str | None, region: str, verify: str | bool) -> Any:
    """One boto3 client per distinct set of connection settings, kept: making one costs
    5-10 ms, paid otherwise on every PredictModelSize and every load. boto3 clients are
    thread-safe; a changed storage-config secret gives other settings, so a new client.
    (The cache holds the credentials in memory only, as the client itself does.)"""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name=region,
        verify=verify,
        config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60),
    )


def _s3_objects(client: Any, bucket: str, path: str) -> list[RemoteObject]:
    """The object at `path`, or every object under `path/`."""
    key = path.lstrip("/")
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        return [RemoteObject(key, int(head["ContentLength"]), str(head.get("ETag", "")))]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    prefix = key.rstrip("/") + "/"
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                out.append(RemoteObject(obj["Key"], int(obj["Size"]), str(obj.get("ETag", ""))))
    return out


def _fetch_s3(cfg: StorageConfig, *, path: str, dest: Path) -> int:
    client, bucket = _s3(cfg)
    try:
        objects = _s3_objects(client, bucket, path)
    except EndpointConnectionError as err:
        raise Unavailable(f"cannot reach the S3 endpoint for bucket {bucket!r}") from err
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",):
            raise FailedPrecondition(f"bucket {bucket!r} does not exist") from err
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            raise FailedPrecondition(f"access to s3://{bucket}/{path} was denied ({code}); check the storage credentials") from err
        raise Unavailable(f"S3 error for s3://{bucket}/{path}: {code}") from err
    except BotoCoreError as err:
        raise Unavailable(f"S3 error for s3://{bucket}/{path}: {type(err).__name__}") from err
    if not objects:
        raise FailedPrecondition(f"no object or prefix at s3://{bucket}/{path.lstrip('/')}")

    def download(obj: RemoteObject, tmp: Path) -> None:
        try:
            client.download_file(bucket, obj.key, str(tmp))
        except (ClientError, BotoCoreError) as err:
            raise Unavailable(f"download of s3://{bucket}/{obj.key} failed: {type(err).__name__}") from err

    return sync_objects(objects, path=path, dest=dest, download=download)


def _read_manifest(dest: Path) -> dict[str, str]:
    try:
        data = json.loads((dest / MANIFEST).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _copy_local(source: Path, dest: Path) -> int:
    if not source.exists():
        raise FailedPrecondition(f"model path {source} does not exist")
    if source.is_file():
        shutil.copy2(source, dest / source.name)
        return source.stat().st_size
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return sum(p.stat().st_size for p in source.rglob("*") if p.is_file())


def _fetch_http(cfg: StorageConfig, *, path: str, dest: Path) -> int:
    base = str(cfg.fields.get("url", "")).rstrip("/")
    url, _, query = base.partition("?")
    full = f"{url}/{path.lstrip('/')}" + (f"?{query}" if query else "")
    name = PurePosixPath(path).name or "_model"
    target = safe_join(dest, name)
    headers = cfg.fields.get("headers") or {}
    try:
        with httpx.stream("GET", full, headers=headers, timeout=60, follow_redirects=True) as response:
            if response.status_code == 404:
                raise FailedPrecondition(f"no file at {url}/{path.lstrip('/')} (HTTP 404)")
            response.raise_for_status()
            with open(target, "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
    except httpx.HTTPError as err:
        raise Unavailable(f"download from {url} failed: {type(err).__name__}") from err
    return target.stat().st_size
