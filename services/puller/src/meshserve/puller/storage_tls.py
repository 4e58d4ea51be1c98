"""TLS material from a storage-config secret: PEM text, never file paths.

ModelMesh's `certificate` (S3, HTTP) is the PEM text of a CA bundle, and HTTP's
`client_certificate` / `client_key` are PEM text too. Python's TLS stack wants files for
some of them, so:

- `ca_bundle_file(pem)`: certifi's public roots plus the given CA(s), written once per
  distinct PEM to a 0600 file in a private 0700 folder of this process (boto3's `verify`
  takes a path). The upstream puller adds the CA to the system pool the same way, so a
  public endpoint still verifies when a certificate is set. CA certificates are public;
  the file stays until the process exits.
- `ssl_context(ca=..., client_certificate=..., client_key=...)`: an `SSLContext` (httpx's
  `verify`), cached per distinct PEMs. The client key goes to a 0600 file only for the
  moment `load_cert_chain` reads it, and is deleted at once.

Every failure names the config field; the PEM text is never quoted.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import certifi

from meshserve.common.errors import FailedPrecondition

_LOCK = threading.Lock()
_DIR: Path | None = None


def pem_text(value: object, *, field: str) -> str:
    """The PEM text of a config field; JSON-escaped newlines (`\\n` typed in a secret) undone."""
    text = str(value or "").strip()
    if "\\n" in text and "\n" not in text:
        text = text.replace("\\n", "\n")
    if "-----BEGIN " not in text:
        raise FailedPrecondition(
            f"storage config field {field!r} must hold PEM text (-----BEGIN ...), not a file path or other value"
        )
    return text + "\n"


def _private_dir() -> Path:
    global _DIR
    with _LOCK:
        if _DIR is None:
            _DIR = Path(tempfile.mkdtemp(prefix="meshserve-puller-tls-"))  # 0700
            atexit.register(shutil.rmtree, _DIR, True)
        return _DIR


def _write_private(name: str, data: bytes) -> Path:
    path = _private_dir() / name
    tmp = path.with_name(f"{name}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
    return path


def _check_ca(pem: str, field: str) -> None:
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as err:
        raise FailedPrecondition(f"storage config field {field!r} is not a valid PEM CA certificate bundle") from err


@functools.lru_cache(maxsize=16)
def ca_bundle_file(pem: str, *, field: str = "certificate") -> str:
    """A CA bundle file: certifi's roots plus `pem` (already `pem_text`); same PEM, same file."""
    _check_ca(pem, field)
    digest = hashlib.sha256(pem.encode()).hexdigest()[:24]
    roots = Path(certifi.where()).read_bytes()
    return str(_write_private(f"ca-{digest}.pem", roots.rstrip(b"\n") + b"\n" + pem.encode()))


@contextlib.contextmanager
def _key_file(key: str) -> Iterator[Path]:
    path = _write_private(f"key-{os.getpid()}-{threading.get_ident()}.pem", key.encode())
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@functools.lru_cache(maxsize=16)
def ssl_context(*, ca: str | None, client_certificate: str | None, client_key: str | None) -> ssl.SSLContext:
    """A client context trusting certifi's roots (+ `ca`), presenting the client certificate
    when one is given. All arguments are PEM text (already `pem_text`). Thread-safe to share."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca is not None:
        _check_ca(ca, "certificate")
        context.load_verify_locations(cadata=ca)
    if (client_certificate is None) != (client_key is None):
        missing = "client_key" if client_key is None else "client_certificate"
        raise FailedPrecondition(f"storage config field {missing!r} is required with the other of client_certificate/client_key")
    if client_certificate is not None and client_key is not None:
        cert = _write_private(f"cert-{hashlib.sha256(client_certificate.encode()).hexdigest()[:24]}.pem", client_certificate.encode())
        with _key_file(client_key) as key:
            try:
                context.load_cert_chain(certfile=str(cert), keyfile=str(key))
            except (ssl.SSLError, ValueError) as err:
                raise FailedPrecondition(
                    "storage config fields 'client_certificate' and 'client_key' are not a matching PEM certificate "
                    "and unencrypted private key"
                ) from err
    return context
