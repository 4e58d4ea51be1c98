"""HTTP(S) for the puller: `type: http` keys and plain `http(s)://host/path` storage URIs.

The model is the one file at `<url>/<path>` (the URL's query kept, e.g. `?raw=true`),
saved under its base name. Storage-config fields, as ModelMesh's:

- `url` (required; the storage URI fills it in), `headers` (a JSON object of strings,
  sent with every request, e.g. an `Authorization` header),
- `certificate`: PEM text of the CA bundle of the server (added to the public roots),
- `client_certificate` + `client_key`: PEM text of a client certificate and its
  unencrypted key, for servers that require one (mutual TLS).

Redirects are followed (httpx drops `Authorization` when one leaves the origin). The
body streams to a `.part` file renamed into place once complete; a dropped connection or
a 5xx/429 is retried (`ATTEMPTS`), a refused handshake or a 4xx is not. Messages name the
URL without its query and without user info, and the config field to fix; never a header
value or a key.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from meshserve.common.errors import FailedPrecondition, MeshError, Unavailable
from meshserve.common.logging import register_secret
from meshserve.common.storage import safe_join
from meshserve.puller.storage_tls import pem_text, ssl_context

log = logging.getLogger(__name__)

ATTEMPTS = 3
TIMEOUT = httpx.Timeout(60.0, connect=5.0)
"""A dead server shows within 5 s; a slow large download gets a minute between chunks."""
SENSITIVE_HEADER_WORDS = ("auth", "token", "key", "secret", "cookie", "password", "signature")


class _Transient(Unavailable):
    """A failure worth another try."""


def fetch(fields: Mapping[str, Any], *, path: str, dest: Path) -> int:
    """Download `<url>/<path>` into `dest/<base name>`; returns its size. Blocking."""
    full, shown = _urls(fields, path)
    headers = headers_of(fields)
    verify = _verify(fields)
    target = safe_join(dest, PurePosixPath(path).name or "_model")
    tmp = target.with_name(target.name + ".part")
    try:
        _download(full, shown, headers, verify, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    return target.stat().st_size


def check(fields: Mapping[str, Any], *, path: str) -> None:
    """The config checks of `fetch`, without a request."""
    _urls(fields, path)
    headers_of(fields)
    _verify(fields)


def headers_of(fields: Mapping[str, Any]) -> dict[str, str]:
    """The `headers` field as a dict (a JSON string is accepted: storage_params are strings);
    values of credential-like headers are registered as secrets, so no log line shows them."""
    raw = fields.get("headers") or {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as err:
            raise FailedPrecondition("storage config field 'headers' must be a JSON object of strings") from err
    if not isinstance(raw, Mapping) or not all(isinstance(v, str | int | float) for v in raw.values()):
        raise FailedPrecondition("storage config field 'headers' must be a JSON object of strings")
    headers = {str(k): str(v) for k, v in raw.items()}
    for name, value in headers.items():
        if any(word in name.lower() for word in SENSITIVE_HEADER_WORDS):
            register_secret(value)
            register_secret(value.partition(" ")[2] or None)  # the token after "Bearer "
    return headers


def _urls(fields: Mapping[str, Any], path: str) -> tuple[str, str]:
    """(the URL to GET, the URL to show: no query, no user info)."""
    base = str(fields.get("url") or "")
    if not base:
        raise FailedPrecondition("required configuration 'url' missing for storage type http")
    try:
        parts = urlsplit(base)
        port = parts.port   # a port that is no number, or out of range, raises here
    except ValueError as err:
        raise FailedPrecondition("storage config field 'url' is not a valid URL (host or port)") from err
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FailedPrecondition("storage config field 'url' must be an http:// or https:// URL with a host")
    url_path = parts.path.rstrip("/") + "/" + path.lstrip("/")
    full = urlunsplit((parts.scheme, parts.netloc, url_path, parts.query, ""))
    netloc = parts.hostname + (f":{port}" if port else "")
    return full, urlunsplit((parts.scheme, netloc, url_path, "", ""))


def _verify(fields: Mapping[str, Any]) -> ssl.SSLContext | bool:
    ca, cert, key = (fields.get(name) for name in ("certificate", "client_certificate", "client_key"))
    if not (ca or cert or key):
        return True
    if key:
        register_secret(str(key))
    return ssl_context(
        ca=pem_text(ca, field="certificate") if ca else None,
        client_certificate=pem_text(cert, field="client_certificate") if cert else None,
        client_key=pem_text(key, field="client_key") if key else None,
    )


def _log_retry(state: RetryCallState) -> None:
    err = state.outcome.exception() if state.outcome else None
    log.warning("%s; retrying, attempt %d of %d", err, state.attempt_number + 1, ATTEMPTS)


@retry(
    retry=retry_if_exception_type(_Transient),
    stop=stop_after_attempt(ATTEMPTS),
    wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
    before_sleep=_log_retry,
    reraise=True,
)
def _download(full: str, shown: str, headers: dict[str, str], verify: ssl.SSLContext | bool, tmp: Path) -> None:
    try:
        with (
            httpx.Client(verify=verify, timeout=TIMEOUT, follow_redirects=True, headers=headers) as client,
            client.stream("GET", full) as response,
        ):
            _check_status(response.status_code, shown)
            with tmp.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
    except MeshError:
        raise
    except httpx.HTTPError as err:
        raise classify(err, shown) from err


def _check_status(status: int, shown: str) -> None:
    if status < 400:
        return
    if status == 404:
        raise FailedPrecondition(f"no file at {shown} (HTTP 404)")
    if status in (401, 403):
        raise FailedPrecondition(
            f"access to {shown} was denied (HTTP {status}); check the storage config field 'headers' "
            "(or client_certificate/client_key)"
        )
    if status == 429 or status >= 500:
        raise _Transient(f"download from {shown} failed (HTTP {status})")
    raise FailedPrecondition(f"download from {shown} was refused (HTTP {status})")


def classify(err: httpx.HTTPError, shown: str) -> MeshError:
    """An httpx error → ours; TLS problems name the field that fixes them."""
    tls = _ssl_cause(err)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return FailedPrecondition(
            f"the TLS certificate of {shown} is not trusted ({tls.verify_message}); set the storage config field "
            "'certificate' to the PEM text of the CA that signed it"
        )
    if tls is not None:
        reason = (tls.reason or type(tls).__name__).lower().replace("_", " ")
        if any(word in reason for word in ("certificate required", "bad certificate", "unknown ca", "handshake failure")):
            return FailedPrecondition(
                f"the server {shown} refused the TLS handshake ({reason}): it requires a client certificate it "
                "trusts; check the storage config fields 'client_certificate' and 'client_key'"
            )
        return Unavailable(f"TLS with {shown} failed ({reason})")
    if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout):
        return Unavailable(f"cannot connect to {shown}")
    if isinstance(err, httpx.TooManyRedirects):
        return FailedPrecondition(f"too many redirects from {shown}")
    if isinstance(err, httpx.TransportError):  # dropped connection, short body, read timeout
        return _Transient(f"download from {shown} failed: {type(err).__name__}")
    return Unavailable(f"download from {shown} failed: {type(err).__name__}")


def _ssl_cause(err: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
