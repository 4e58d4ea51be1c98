"""Azure Blob Storage for the puller: `type: azure` storage configs and
`https://<account>.blob.core.windows.net/<container>/<path>` storage URIs.

Owns the azure-storage-blob boundary and nothing else: it lists what lies at a model
path, hands the objects to `storage.sync_objects` (which keeps every local path inside
the model folder and skips unchanged files), and translates Azure's errors into ours.

Storage-config fields:

- `container` (required; the storage URI fills it in, with `account_name`).
- `connection_string` (ModelMesh's field): `AccountName=...;AccountKey=...` and
  optionally `BlobEndpoint=...` (how Azurite is reached).
- or `account_name` + `account_key` (a shared key; not an upstream field), with
  `endpoint` overriding the account URL `https://<account_name>.blob.core.windows.net`
  (e.g. `http://127.0.0.1:10000/devstoreaccount1` for Azurite).
- or `account_name` alone: anonymous reads of a public container.
- or `account_name` + `client_id` / `client_secret` / `tenant_id` (a service principal,
  upstream's other option): azure-identity's `ClientSecretCredential` gets OAuth tokens
  from Microsoft Entra ID (`authority_host`, not an upstream field, names another
  authority: a sovereign cloud, or a test's token endpoint). Bearer tokens need HTTPS.
- `certificate` (not an upstream field for azure; as S3's): PEM text of a CA bundle the
  blob endpoint and the authority are verified with, beside the public roots.

Precedence: `connection_string`, then `account_key`, then the service principal, then
anonymous.

Every download names the ETag seen in the listing (If-Match), so the bytes on disk are
always the version the manifest records. Retries are short (one quick retry, no retry of
a refused connection): ModelMesh retries a failed load itself. Error messages name the
account, container, path and config field, never a key.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry

from meshserve.common.errors import FailedPrecondition, Unavailable
from meshserve.puller import storage_tls
from meshserve.puller.model_cache import ModelCache
from meshserve.puller.storage import RemoteObject, sync_objects

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5
"""Seconds to open a connection: a dead endpoint shows quickly."""
READ_TIMEOUT = 60
"""Seconds without a byte before a read fails: a slow large download still gets through."""
RETRIES = 2
SERVICE_PRINCIPAL_FIELDS = ("client_id", "client_secret", "tenant_id")


def fetch(fields: Mapping[str, Any], *, path: str, dest: Path, cache: ModelCache | None = None) -> int:
    """Download the blob at `path` (or every blob under `path/`) into `dest`, through the
    node's `cache` when there is one. Blocking."""
    container, where = _container(fields, path)
    with _azure_errors(where, container):
        objects = _objects(container, path)
    if not objects:
        raise FailedPrecondition(f"no object or prefix at {where}")

    def download(obj: RemoteObject, tmp: Path) -> None:
        with _azure_errors(f"{_base_url(container)}/{obj.key}", container), open(tmp, "wb") as out:
            stream = container.download_blob(
                obj.key, etag=obj.version, match_condition=MatchConditions.IfNotModified, max_concurrency=2
            )
            stream.readinto(out)

    return sync_objects(objects, path=path, dest=dest, download=download, cache=cache, source=f"azure:{_base_url(container)}")


def predict_size(fields: Mapping[str, Any], *, path: str) -> int:
    """Sum of the blob sizes at `path` without downloading them; 0 when storage fails."""
    container, where = _container(fields, path)
    try:
        with _azure_errors(where, container):
            return sum(obj.size for obj in _objects(container, path))
    except (FailedPrecondition, Unavailable) as err:
        log.info("cannot size %s: %s", where, err)
        return 0


def check(fields: Mapping[str, Any], *, path: str) -> None:
    """The config checks of `fetch`: the client is built (a service principal's credential
    too), nothing is sent."""
    _container(fields, path)


def _objects(container: ContainerClient, path: str) -> list[RemoteObject]:
    """The blob named `path`, or every blob under `path/`. Folder markers (names ending in
    `/`, and the `hdi_isfolder` blobs of accounts with a hierarchical namespace) are skipped."""
    key = path.lstrip("/")
    if key and not key.endswith("/"):
        try:
            props = container.get_blob_client(key).get_blob_properties()
        except ResourceNotFoundError:
            pass  # no such blob (or no such container: the listing below says which)
        else:
            if not _is_folder(props):
                return [RemoteObject(key, int(props.size), str(props.etag), checksum=_checksum(props))]
    prefix = key.rstrip("/") + "/" if key.strip("/") else None
    return [
        RemoteObject(blob.name, int(blob.size), str(blob.etag), checksum=_checksum(blob))
        for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"])
        if not blob.name.endswith("/") and not _is_folder(blob)
    ]


def _checksum(props: Any) -> str:
    """The blob's Content-MD5 when it has one (the cache key names it; the ETag is the version)."""
    md5 = getattr(getattr(props, "content_settings", None), "content_md5", None)
    return f"md5:{bytes(md5).hex()}" if md5 else ""


def _is_folder(props: Any) -> bool:
    return str((props.metadata or {}).get("hdi_isfolder", "")).lower() == "true"


@contextlib.contextmanager
def _azure_errors(where: str, container: ContainerClient) -> Iterator[None]:
    """Azure's exceptions → ours (as httpx's `map_exceptions`). Only status and error codes
    are quoted: Azure's own messages echo request details."""
    account, name = container.account_name, container.container_name
    try:
        yield
    except ResourceNotFoundError as err:
        if _code(err) == "ContainerNotFound":
            raise FailedPrecondition(f"container {name!r} does not exist in storage account {account!r}") from err
        raise FailedPrecondition(f"no blob at {where} (it may have been deleted during the download)") from err
    except ResourceModifiedError as err:
        raise Unavailable(f"{where} changed during the download; the load can be retried") from err
    except ClientAuthenticationError as err:
        if err.status_code is None:  # the request could not even be signed
            raise FailedPrecondition(
                f"cannot sign requests for storage account {account!r}: the storage config's account key is not valid base64"
            ) from err
        raise _denied(where, err) from err
    except HttpResponseError as err:
        status = int(err.status_code or 0)
        if status in (401, 403):
            raise _denied(where, err) from err
        if 400 <= status < 500:
            raise FailedPrecondition(f"Azure refused the request for {where} (HTTP {status}, {_code(err)})") from err
        raise Unavailable(f"Azure error for {where} (HTTP {status}, {_code(err)})") from err
    except ServiceRequestError as err:
        raise Unavailable(f"cannot reach the Azure Blob endpoint for {where}") from err
    except ServiceResponseError as err:
        raise Unavailable(f"the Azure Blob endpoint dropped the response for {where}") from err


def _code(err: HttpResponseError) -> str:
    """The service's error code (`ContainerNotFound`, `AuthenticationFailed`, ...), which
    azure-storage-blob attaches to the exception it raises."""
    return str(getattr(err, "error_code", None) or "no error code")


def _denied(where: str, err: HttpResponseError) -> FailedPrecondition:
    return FailedPrecondition(
        f"access to {where} was denied (HTTP {err.status_code}, {_code(err)}); check the storage credentials"
    )


def _container(fields: Mapping[str, Any], path: str) -> tuple[ContainerClient, str]:
    name = str(fields.get("container") or "")
    if not name:
        raise FailedPrecondition("required configuration 'container' missing from command")
    principal = tuple(str(fields.get(f) or "") for f in SERVICE_PRINCIPAL_FIELDS)
    certificate = fields.get("certificate")
    service = _service(
        str(fields.get("connection_string") or "") or None,
        str(fields.get("account_name") or "") or None,
        str(fields.get("account_key") or "") or None,
        str(fields.get("endpoint") or fields.get("endpoint_url") or "") or None,
        principal=principal if any(principal) else None,
        authority_host=str(fields.get("authority_host") or "") or None,
        ca_pem=storage_tls.pem_text(certificate, field="certificate") if certificate else None,
    )
    container = service.get_container_client(name)
    return container, f"{_base_url(container)}/{path.lstrip('/')}"


def _base_url(container: ContainerClient) -> str:
    """The container's URL for messages: without its query, which holds a SAS token when
    the connection string carries one."""
    return container.url.split("?")[0].rstrip("/")


@functools.lru_cache(maxsize=32)
def _service(
    connection_string: str | None,
    account_name: str | None,
    account_key: str | None,
    endpoint: str | None,
    *,
    principal: tuple[str, ...] | None,
    authority_host: str | None,
    ca_pem: str | None,
) -> BlobServiceClient:
    """One client per distinct set of connection settings, kept: Azure's clients are
    thread-safe and keep their connection pool (and the service principal's credential
    its token until it expires). The cache holds the secrets in memory only, as the
    clients themselves do."""
    options: dict[str, Any] = {
        # the SDK's default waits 15 s, then 18 s, ... between attempts
        "retry_policy": ExponentialRetry(
            initial_backoff=1, increment_base=2, retry_total=RETRIES, random_jitter_range=1, retry_connect=0
        ),
        "connection_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
    }
    if ca_pem is not None:
        options["connection_verify"] = storage_tls.ca_bundle_file(ca_pem)
    if connection_string:
        try:
            return BlobServiceClient.from_connection_string(connection_string, **options)
        except ValueError as err:  # its text is generic, but never quote anything near the key
            raise FailedPrecondition(
                "storage config field 'connection_string' is malformed (expected AccountName=...;AccountKey=...;...)"
            ) from err
    if not account_name and not endpoint:
        raise FailedPrecondition("required configuration 'account_name' (or 'connection_string') missing from command")
    url = endpoint or f"https://{account_name}.blob.core.windows.net"
    if not url.startswith(("http://", "https://")):
        raise FailedPrecondition(f"storage config field 'endpoint' must be an http(s):// URL, got {url!r}")
    field = "endpoint" if endpoint else "account_name"
    if account_key:
        if not account_name:
            raise FailedPrecondition("storage config field 'account_name' is required with 'account_key'")
        return _blob_service(url, field, credential=AzureNamedKeyCredential(account_name, account_key), **options)
    if principal is not None:
        if not url.startswith("https://"):
            raise FailedPrecondition(
                f"service principal auth sends bearer tokens, which need HTTPS: storage config field 'endpoint' is {url!r}"
            )
        credential = service_principal_credential(
            tenant_id=principal[2], client_id=principal[0], client_secret=principal[1],
            authority_host=authority_host, ca_file=options.get("connection_verify"),
        )
        return _blob_service(url, field, credential=credential, **options)
    return _blob_service(url, field, **options)  # anonymous: a public container


def _blob_service(url: str, field: str, **options: Any) -> BlobServiceClient:
    try:
        return BlobServiceClient(url, **options)
    except ValueError as err:  # the SDK's URL parsing; the URL is not quoted (it may hold a SAS token)
        raise FailedPrecondition(f"storage config field {field!r} does not give a valid account URL") from err


def service_principal_credential(
    *, tenant_id: str, client_id: str, client_secret: str, authority_host: str | None, ca_file: str | None
) -> Any:
    """azure-identity's ClientSecretCredential for a `type: azure` key's service principal,
    wrapped so that a refused or failed token request becomes our error (naming the tenant,
    the client id and the fields to check, never the secret)."""
    for name, value in zip(SERVICE_PRINCIPAL_FIELDS, (client_id, client_secret, tenant_id), strict=True):
        if not value:
            raise FailedPrecondition(
                f"storage config field {name!r} is required for service principal auth (client_id, client_secret, tenant_id)"
            )
    authority = authority_host or "https://login.microsoftonline.com"
    if "://" not in authority:
        authority = f"https://{authority}"
    if not authority.startswith("https://"):
        raise FailedPrecondition(f"storage config field 'authority_host' must be an https:// URL, got {authority!r}")
    try:
        from azure.identity import ClientSecretCredential
    except ImportError as err:
        raise FailedPrecondition(
            "service principal auth (client_id/client_secret/tenant_id) needs the Python package azure-identity, "
            "which is not installed"
        ) from err
    options: dict[str, Any] = {
        "authority": authority,
        "connection_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
    }
    if authority_host:
        # a custom authority (a test's token endpoint, a private cloud) is not in Microsoft's
        # list of known authorities: skip that check, its metadata comes from the authority itself
        options["disable_instance_discovery"] = True
    if ca_file is not None:
        options["connection_verify"] = ca_file
    try:
        inner = ClientSecretCredential(tenant_id, client_id, client_secret, **options)
    except ValueError as err:  # azure-identity checks the tenant id's characters
        raise FailedPrecondition(f"storage config field 'tenant_id' is not a valid tenant id: {tenant_id!r}") from err
    return _TokenErrors(inner, tenant_id=tenant_id, client_id=client_id, authority=authority)


def _caused_by(err: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    seen: BaseException | None = err
    for _ in range(10):  # bounded: a chain can loop through __context__
        if seen is None:
            return False
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _TokenErrors:
    """A TokenCredential that turns azure-identity's failures into ours, once, at the token:
    the blob pipeline would otherwise report them as a refused signature."""

    def __init__(self, inner: Any, *, tenant_id: str, client_id: str, authority: str) -> None:
        self._inner = inner
        self._who = f"client id {client_id!r} of tenant {tenant_id!r} at {authority}"

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.identity import CredentialUnavailableError

        try:
            return self._inner.get_token(*scopes, **kwargs)
        except CredentialUnavailableError as err:
            raise Unavailable(f"cannot get a token for {self._who}; the load can be retried") from err
        except ClientAuthenticationError as err:
            # azure-identity keeps the authority's answer from us (`response` is None for a
            # client-credentials grant); a transport error in the chain means no answer at all
            if _caused_by(err, (ServiceRequestError, ServiceResponseError)):
                raise Unavailable(f"cannot reach the authority to get a token for {self._who}") from err
            raise FailedPrecondition(
                f"the authority refused a token for {self._who}; "
                "check the storage config fields 'client_id', 'client_secret' and 'tenant_id'"
            ) from err

    def close(self) -> None:
        self._inner.close()
