"""S3 (and S3-compatible stores: MinIO, Ceph, moto) for the puller: `type: s3` and `s3://`.

Owns the boto3 boundary: the client (one per set of connection settings, kept), the
listing, the verified download of one object, and the translation of botocore's errors
into ours (httpx's `map_exceptions` habit). The loop over objects is `storage.sync_objects`,
here with up to `WORKERS` objects downloading at once.

Storage-config fields (ModelMesh's, plus addressing):

- `bucket` (required; `default_bucket` is the deprecated alias), `endpoint_url`, `region`,
  `access_key_id` / `secret_access_key` (none: the default boto3 credential chain).
- `certificate`: the PEM text of the CA bundle that signed the endpoint's certificate
  (added to the public roots; see `storage_tls`).
- `addressing_style`: `auto` (default: path style for a custom endpoint, virtual-host on
  AWS), `path` or `virtual`; `s3_force_path_style: true` is the same as `path`.

A download streams to disk (s3transfer: ranged GETs of `PART_BYTES` for larger objects),
then its size is checked against the listing, and so is its MD5 when the ETag is a plain
MD5 (a single-part upload). A dropped connection, a short or corrupt body, or a 5xx is
retried for the whole object by tenacity (`ATTEMPTS`), then fails as Unavailable; the
`.part` file is removed. Error messages name the bucket, key and config field, never a
credential.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import RetriesExceededError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    FlexibleChecksumError,
    IncompleteReadError,
    InvalidRegionError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from meshserve.common.errors import FailedPrecondition, Unavailable
from meshserve.puller.model_cache import ModelCache
from meshserve.puller.storage_sync import RemoteObject, sync_objects
from meshserve.puller.storage_tls import ca_bundle_file, pem_text

log = logging.getLogger(__name__)

WORKERS = 8
"""Objects downloaded at once: a Triton repository or a SavedModel is many small files, where
the round trips, not the bandwidth, cost the time."""
PART_BYTES = 8 << 20
"""Objects above this are fetched as ranged GETs of this size (s3transfer), `PART_CONCURRENCY`
at a time, written to disk as they come: memory stays bounded whatever the object's size."""
PART_CONCURRENCY = 4
ATTEMPTS = 3
"""Tries per object on a transient failure (dropped connection, short or corrupt body, 5xx).
s3transfer's own retry is off, so this is the only layer (no 3 x 5 x 3 multiplication)."""
TRANSFER = TransferConfig(
    multipart_threshold=PART_BYTES,
    multipart_chunksize=PART_BYTES,
    max_concurrency=PART_CONCURRENCY,
    num_download_attempts=1,
    preferred_transfer_client="classic",
)
ADDRESSING = {"auto", "path", "virtual"}
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class _Transient(Unavailable):
    """A failure worth another try of the same object."""


def client_for(fields: Mapping[str, Any]) -> tuple[Any, str]:
    """The kept boto3 client for these settings, and the bucket. FailedPrecondition on a bad config."""
    bucket = str(fields.get("bucket") or "")
    if not bucket:
        raise FailedPrecondition("required configuration 'bucket' missing from command")
    verify: str | bool = True
    if fields.get("certificate"):
        verify = ca_bundle_file(pem_text(fields["certificate"], field="certificate"))
    elif fields.get("certificate_file"):  # a local path to a bundle (local mode); not upstream's
        verify = str(fields["certificate_file"])
    key_id = str(fields.get("access_key_id") or "") or None
    secret = str(fields.get("secret_access_key") or "") or None
    if (key_id is None) != (secret is None):
        missing = "access_key_id" if key_id is None else "secret_access_key"
        raise FailedPrecondition(
            f"storage config field {missing!r} is required with the other of access_key_id/secret_access_key"
        )
    try:
        client = _client(
            str(fields.get("endpoint_url") or "") or None, key_id, secret,
            str(fields.get("region") or "us-east-1"), verify, _addressing(fields),
        )
    except InvalidRegionError as err:
        raise FailedPrecondition(f"storage config field 'region' is not a valid region name: {fields.get('region')!r}") from err
    except ValueError as err:  # botocore's "Invalid endpoint": never quoted (a URL may carry user info)
        raise FailedPrecondition("storage config field 'endpoint_url' is not a valid http(s) URL") from err
    return client, bucket


def _addressing(fields: Mapping[str, Any]) -> str:
    style = str(fields.get("addressing_style") or "auto").lower()
    if style not in ADDRESSING:
        raise FailedPrecondition(f"storage config field 'addressing_style' must be one of auto, path, virtual; got {style!r}")
    force = fields.get("s3_force_path_style")
    if force is True or str(force).lower() in ("true", "1", "yes"):
        return "path"
    return style


@functools.lru_cache(maxsize=32)
def _client(
    endpoint: str | None, key_id: str | None, secret: str | None, region: str, verify: str | bool, addressing: str
) -> Any:
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
        config=BotoConfig(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=WORKERS * PART_CONCURRENCY,
            s3={"addressing_style": addressing},
        ),
    )


def fetch(fields: Mapping[str, Any], *, path: str, dest: Path, cache: ModelCache | None = None) -> int:
    """Download the object at `path` (or everything under `path/`) into `dest`, through the
    node's `cache` when there is one. Blocking."""
    client, bucket = client_for(fields)
    where = f"s3://{bucket}/{path.lstrip('/')}"
    with s3_errors(where, bucket=bucket):
        objects = list_objects(client, bucket, path)
    if not objects:
        raise FailedPrecondition(f"no object or prefix at {where}")
    return sync_objects(
        objects, path=path, dest=dest, download=functools.partial(download, client, bucket), workers=WORKERS,
        cache=cache, source=f"s3:{client.meta.endpoint_url}/{bucket}",
    )


def predict_size(fields: Mapping[str, Any], *, path: str) -> int:
    """Sum of the object sizes at `path`; 0 when the storage fails (a bad config still raises)."""
    client, bucket = client_for(fields)
    try:
        with s3_errors(f"s3://{bucket}/{path.lstrip('/')}", bucket=bucket):
            return sum(obj.size for obj in list_objects(client, bucket, path))
    except (FailedPrecondition, Unavailable) as err:
        log.info("cannot size s3://%s/%s: %s", bucket, path.lstrip("/"), err)
        return 0


def list_objects(client: Any, bucket: str, path: str) -> list[RemoteObject]:
    """The object at `path`, or every object under `path/` (folder placeholders skipped)."""
    key = path.lstrip("/")
    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            return [_remote(key, int(head["ContentLength"]), str(head.get("ETag", "")))]
        except ClientError as err:
            if _code(err) not in ("404", "NoSuchKey", "NotFound"):
                raise
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                out.append(_remote(obj["Key"], int(obj["Size"]), str(obj.get("ETag", ""))))
    return out


def _remote(key: str, size: int, etag: str) -> RemoteObject:
    """The ETag is the version; a plain 32-hex ETag (a single-part upload) is also the MD5
    that `download` checks, so it names the bytes in the cache key too."""
    md5 = etag.strip('"').lower()
    return RemoteObject(key, size, etag, checksum=f"md5:{md5}" if _MD5.match(md5) else "")


def _log_retry(state: RetryCallState) -> None:
    err = state.outcome.exception() if state.outcome else None
    where = f"s3://{state.args[1]}/{state.args[2].key}" if len(state.args) > 2 else "an object"
    log.warning("download of %s failed (%s); retrying, attempt %d of %d", where, err, state.attempt_number + 1, ATTEMPTS)


@retry(
    retry=retry_if_exception_type(_Transient),
    stop=stop_after_attempt(ATTEMPTS),
    wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
    before_sleep=_log_retry,
    reraise=True,
)
def download(client: Any, bucket: str, obj: RemoteObject, tmp: Path) -> None:
    """Stream one object to `tmp` and check it against the listing."""
    where = f"s3://{bucket}/{obj.key}"
    with s3_errors(where, bucket=bucket, during_download=True):
        client.download_file(bucket, obj.key, str(tmp), Config=TRANSFER)
    got = tmp.stat().st_size
    if got != obj.size:
        raise _Transient(f"{where}: downloaded {got} bytes, the listing said {obj.size}; it may have changed meanwhile")
    etag = obj.version.strip('"').lower()
    if _MD5.match(etag) and _md5(tmp) != etag and not _etag_is_not_md5(client, bucket, obj.key):
        raise _Transient(f"{where}: the downloaded bytes do not match the object's MD5 (ETag); the download was corrupted")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _etag_is_not_md5(client: Any, bucket: str, key: str) -> bool:
    """SSE-KMS and SSE-C objects have a 32-hex ETag that is not the MD5 of their bytes;
    asked only after a mismatch, so an ordinary download costs no extra request."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError):
        return False
    return str(head.get("ServerSideEncryption", "")).startswith("aws:kms") or bool(head.get("SSECustomerAlgorithm"))


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _tls_reason(err: BaseException) -> str:
    """`certificate verify failed: <why>` from botocore's SSL text (which also quotes the URL)."""
    match = re.search(r"certificate verify failed[^(\]]*", str(err))
    return match.group(0).strip() if match else "TLS handshake failed"


@contextlib.contextmanager
def s3_errors(where: str, *, bucket: str, during_download: bool = False) -> Iterator[None]:
    """botocore's and s3transfer's exceptions → ours. Only codes and type names are quoted."""
    try:
        yield
    except RetriesExceededError as err:
        raise _Transient(f"download of {where} failed: {_cause_name(err)}") from err
    except SSLError as err:
        raise FailedPrecondition(
            f"TLS verification of the S3 endpoint failed for {where} ({_tls_reason(err)}); set the storage config "
            "field 'certificate' to the PEM text of the CA that signed the endpoint's certificate"
        ) from err
    except EndpointConnectionError as err:
        raise Unavailable(f"cannot reach the S3 endpoint (endpoint_url) for {where}") from err
    except NoCredentialsError as err:
        raise FailedPrecondition(
            f"no S3 credentials for {where}: set access_key_id and secret_access_key in the storage config"
        ) from err
    except (
        ResponseStreamingError, IncompleteReadError, ConnectionClosedError, ReadTimeoutError, FlexibleChecksumError,
        ChecksumError,
    ) as err:
        raise _Transient(f"download of {where} failed: {type(err).__name__}") from err
    except ClientError as err:
        code = _code(err)
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            raise FailedPrecondition(f"bucket {bucket!r} does not exist") from err
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "401") or status in (401, 403):
            raise FailedPrecondition(f"access to {where} was denied ({code}); check the storage credentials") from err
        if during_download and code in ("404", "NoSuchKey"):
            raise Unavailable(f"{where} was deleted during the download; the load can be retried") from err
        if status >= 500 or code in ("SlowDown", "InternalError", "ServiceUnavailable"):
            raise _Transient(f"S3 error for {where}: {code}") from err
        raise Unavailable(f"S3 error for {where}: {code}") from err
    except BotoCoreError as err:
        raise Unavailable(f"S3 error for {where}: {type(err).__name__}") from err


def _cause_name(err: BaseException) -> str:
    last = getattr(err, "last_exception", None) or err.__cause__ or err.__context__
    return type(last).__name__ if last is not None else type(err).__name__
