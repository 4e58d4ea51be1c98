"""Google Cloud Storage for the puller: `type: gcs` storage configs and `gs://` paths.

Owns the google-cloud-storage boundary and nothing else: it lists what lies at a model
path, hands the objects to `storage.sync_objects` (which keeps every local path inside
the model folder and skips unchanged files), and translates Google's errors into ours.
It never reads or sets `STORAGE_EMULATOR_HOST` (process-wide state shared by every
thread); an emulator is named by the config's own `endpoint` field instead.

Storage-config fields (ModelMesh's, plus an endpoint override):

- `bucket` (required; `gs://<bucket>/<path>` fills it in).
- `private_key`, `client_email`, `token_uri` (Google's by default), `project_id`,
  `private_key_id`: a service account. Upstream supports only this auth type.
- no `private_key`: anonymous access (public buckets, emulators).
- `endpoint` (or `endpoint_url`): the JSON API base URL, e.g. `http://127.0.0.1:9023`.

Retries are short on purpose: a refused connection fails at once (nothing listens, and
ModelMesh retries the load itself), 429/5xx and timeouts are retried for a few seconds.
Error messages name the bucket, path and config field, never a credential.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage as gcs
from google.cloud.storage.exceptions import DataCorruption
from google.oauth2 import service_account
from urllib3.exceptions import NewConnectionError

from meshserve.common.errors import FailedPrecondition, Unavailable
from meshserve.puller.model_cache import ModelCache
from meshserve.puller.storage import RemoteObject, sync_objects

log = logging.getLogger(__name__)

DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
TIMEOUT = (5.0, 60.0)
"""(connect, read) seconds for each HTTP request: a dead endpoint shows within 5 s, while a
slow large download still gets a minute between chunks."""
RETRY_SECONDS = 8.0
"""Total time spent retrying one call on 429/5xx/timeouts; the loader's own deadline and
ModelMesh's load retries cover anything longer."""


def _transient(err: BaseException) -> bool:
    if isinstance(
        err,
        api_exceptions.TooManyRequests
        | api_exceptions.InternalServerError
        | api_exceptions.BadGateway
        | api_exceptions.ServiceUnavailable
        | api_exceptions.GatewayTimeout,
    ):
        return True
    if isinstance(err, requests.ConnectionError) and not isinstance(err, requests.Timeout):
        return not _refused(err)  # a reset mid-transfer is worth a retry, a refused connect is not
    return isinstance(err, requests.Timeout | requests.exceptions.ChunkedEncodingError)


def _refused(err: requests.ConnectionError) -> bool:
    """No connection could be made at all (refused, no route, unknown host)."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(reason, NewConnectionError)


RETRY = Retry(predicate=_transient, initial=0.2, maximum=2.0, multiplier=2.0, timeout=RETRY_SECONDS)


def fetch(fields: Mapping[str, Any], *, path: str, dest: Path, cache: ModelCache | None = None) -> int:
    """Download the object at `path` (or everything under `path/`) into `dest`, through the
    node's `cache` when there is one. Blocking."""
    client, bucket = _client(fields)
    where = f"gs://{bucket}/{path.lstrip('/')}"
    with _gcs_errors(where, missing=f"bucket {bucket!r} does not exist"):
        objects = _objects(client, bucket, path)
    if not objects:
        raise FailedPrecondition(f"no object or prefix at {where}")

    def download(obj: RemoteObject, tmp: Path) -> None:
        blob = client.bucket(bucket).blob(obj.key)
        generation = int(obj.version.rpartition("@")[2])
        with _gcs_errors(f"gs://{bucket}/{obj.key}", missing=f"object gs://{bucket}/{obj.key} was deleted during the download"):
            # the generation read in the listing: the bytes on disk are the ones the manifest names
            blob.download_to_filename(str(tmp), if_generation_match=generation, timeout=TIMEOUT, retry=RETRY)

    endpoint = str(fields.get("endpoint") or fields.get("endpoint_url") or "") or "https://storage.googleapis.com"
    return sync_objects(objects, path=path, dest=dest, download=download, cache=cache, source=f"gs:{endpoint}/{bucket}")


def predict_size(fields: Mapping[str, Any], *, path: str) -> int:
    """Sum of the object sizes at `path` without downloading them; 0 when storage fails."""
    client, bucket = _client(fields)
    try:
        with _gcs_errors(f"gs://{bucket}/{path.lstrip('/')}", missing=f"bucket {bucket!r} does not exist"):
            return sum(obj.size for obj in _objects(client, bucket, path))
    except (FailedPrecondition, Unavailable) as err:
        log.info("cannot size gs://%s/%s: %s", bucket, path.lstrip("/"), err)
        return 0


def _objects(client: gcs.Client, bucket: str, path: str) -> list[RemoteObject]:
    """The object named `path`, or every object under `path/` (folder placeholders skipped).
    A bucket that does not exist raises NotFound from the listing."""
    key = path.lstrip("/")
    if key and not key.endswith("/"):
        blob = client.bucket(bucket).get_blob(key, timeout=TIMEOUT, retry=RETRY)  # None when absent
        if blob is not None:
            return [_remote(blob)]
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    return [
        _remote(blob)
        for blob in client.list_blobs(bucket, prefix=prefix, timeout=TIMEOUT, retry=RETRY)
        if not blob.name.endswith("/")
    ]


def _remote(blob: Any) -> RemoteObject:
    # md5 names the bytes (absent for composite objects); the generation is needed for
    # the conditional download, so both travel in the version tag
    # (the SDK checks a download against md5 or crc32c itself; the cache key names them too)
    return RemoteObject(
        blob.name, int(blob.size or 0), f"{blob.md5_hash or blob.etag or ''}@{blob.generation}", checksum=_checksum(blob)
    )


def _checksum(blob: Any) -> str:
    for name, value in (("md5", blob.md5_hash), ("crc32c", blob.crc32c)):
        if value:
            try:
                return f"{name}:{base64.b64decode(value).hex()}"
            except (ValueError, TypeError):
                continue
    return ""


@contextlib.contextmanager
def _gcs_errors(where: str, *, missing: str) -> Iterator[None]:
    """Google's exceptions → ours, the way httpx's `map_exceptions` does it. Only the
    exception type and HTTP code are quoted: Google's own texts can echo request details."""
    try:
        yield
    except api_exceptions.NotFound as err:
        raise FailedPrecondition(missing) from err
    except (api_exceptions.Forbidden, api_exceptions.Unauthorized) as err:
        raise FailedPrecondition(f"access to {where} was denied (HTTP {err.code}); check the storage credentials") from err
    except api_exceptions.PreconditionFailed as err:
        raise Unavailable(f"{where} changed during the download; the load can be retried") from err
    except auth_exceptions.RefreshError as err:
        if getattr(err, "retryable", False):
            raise Unavailable(f"the token endpoint for {where} failed; the load can be retried") from err
        raise FailedPrecondition(
            f"the service account in the storage config was rejected for {where}; check private_key, client_email and token_uri"
        ) from err
    except auth_exceptions.TransportError as err:
        raise Unavailable(f"cannot reach the token endpoint (token_uri) for {where}") from err
    except api_exceptions.RetryError as err:
        raise Unavailable(f"GCS kept failing for {where} for {RETRY_SECONDS:.0f}s: {type(err.cause).__name__}") from err
    except api_exceptions.GoogleAPICallError as err:
        code = int(err.code or 0)
        if 400 <= code < 500:
            raise FailedPrecondition(f"GCS refused the request for {where} (HTTP {code})") from err
        raise Unavailable(f"GCS error for {where} (HTTP {code})") from err
    except requests.ConnectionError as err:
        raise Unavailable(f"cannot reach the GCS endpoint for {where}") from err
    except requests.RequestException as err:
        raise Unavailable(f"GCS request for {where} failed: {type(err).__name__}") from err
    except DataCorruption as err:  # the downloaded bytes failed their checksum
        raise Unavailable(f"the download of {where} was corrupted (checksum mismatch)") from err


def check(fields: Mapping[str, Any], *, path: str) -> None:
    """The config checks of `fetch`: the client is built (credentials parsed), nothing is sent."""
    _client(fields)


def _client(fields: Mapping[str, Any]) -> tuple[gcs.Client, str]:
    bucket = str(fields.get("bucket") or "")
    if not bucket:
        raise FailedPrecondition("required configuration 'bucket' missing from command")
    endpoint = str(fields.get("endpoint") or fields.get("endpoint_url") or "") or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise FailedPrecondition(f"storage config field 'endpoint' must be an http(s):// URL, got {endpoint!r}")
    project = str(fields.get("project_id") or "") or None
    credentials = _credentials(
        str(fields.get("private_key") or "") or None,
        str(fields.get("client_email") or "") or None,
        str(fields.get("token_uri") or "") or DEFAULT_TOKEN_URI,
        project,
        str(fields.get("private_key_id") or "") or None,
    )
    # a project is always given: without one the client asks google.auth.default(), which
    # probes the GCE metadata server (seconds, off GCP). Reading objects needs none.
    client = gcs.Client(
        project=project or "meshserve-puller",
        credentials=credentials,
        client_options={"api_endpoint": endpoint} if endpoint else None,
    )
    # google-cloud-storage >= 3.x starts a thread per new client that GETs the bucket's
    # metadata, only to label OpenTelemetry spans; it doubles the requests (and token
    # fetches) of a load and needs storage.buckets.get, which a read-only account may
    # lack. The library itself treats a missing cache as "off" (getattr(..., None)).
    client._bucket_metadata_cache = None
    return client, bucket


@functools.lru_cache(maxsize=32)
def _credentials(
    private_key: str | None, client_email: str | None, token_uri: str, project: str | None, key_id: str | None
) -> Credentials:
    """One credentials object per service account, kept, so its access token is reused
    across loads instead of fetched again for every PredictModelSize and every fetch.
    (The cache holds the key in memory only, as the credentials object itself does.)"""
    if private_key is None:
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    if client_email is None:
        raise FailedPrecondition("storage config field 'client_email' is required with 'private_key'")
    if "\\n" in private_key and "\n" not in private_key:
        private_key = private_key.replace("\\n", "\n")  # a PEM pasted with its JSON escapes kept
    info = {
        "type": "service_account",
        "private_key": private_key,
        "client_email": client_email,
        "token_uri": token_uri,
        "project_id": project,
        "private_key_id": key_id,
    }
    try:
        creds: Credentials = service_account.Credentials.from_service_account_info(info, scopes=[READ_ONLY_SCOPE])  # type: ignore[no-untyped-call]
    except (ValueError, TypeError) as err:
        raise FailedPrecondition("storage config field 'private_key' is not a valid PEM private key") from err
    return creds
