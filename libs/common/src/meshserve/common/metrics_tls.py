"""TLS for a Prometheus metrics port (`metrics.scheme: https`, upstream's `MM_METRICS` `scheme=https`).

Owns: which certificate a metrics port serves. The service's own (a cert file and key file) when
it has one; otherwise a self-signed certificate generated at start-up, as upstream's ModelMesh
does (Prometheus scrapes it with `insecureSkipVerify`, the kustomize monitors' tlsConfig). The
generated key lives in memory and, for the moment `start_http_server` loads it, in a private
temporary folder (0700, the key 0600) that is deleted as soon as the server holds it; it is
never logged (its certificate's fingerprint is). Used by the puller and the router.

Does file I/O; may import the standard library and `cryptography` (imported only when a
certificate is generated).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

VALID_DAYS = 365
"""A generated certificate's life: a pod lives shorter (a restart makes a new one)."""


def self_signed_pem(names: list[str], *, days: int = VALID_DAYS) -> tuple[bytes, bytes, str]:
    """A fresh EC P-256 key and a self-signed server certificate for `names` (DNS names or IP
    addresses; the first is the subject's CN): `(cert_pem, key_pem, sha256 fingerprint)`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names:
        raise ValueError("a certificate needs at least one name")
    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # once each, in order
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert.fingerprint(hashes.SHA256()).hex(":")


def certificate_names(*names: str) -> list[str]:
    """What a generated certificate is valid for: `names` (a pod id, an advertised host), the
    host name and the loopback names; each once, empty ones left out."""
    return [n for n in dict.fromkeys([*names, socket.gethostname(), "localhost", "127.0.0.1", "::1"]) if n]


@contextlib.contextmanager
def metrics_tls(
    scheme: str, *, port: int, names: Iterable[str], cert_file: Path | str | None = None, key_file: Path | str | None = None,
) -> Iterator[dict[str, str]]:
    """`prometheus_client.start_http_server`'s TLS arguments, valid inside the `with` only: none
    for `http`, `cert_file` + `key_file` when both are given, else a generated self-signed
    certificate for `names` (its files are deleted on exit: call `start_http_server` inside, it
    loads them at once)."""
    if scheme != "https":
        yield {}
        return
    if cert_file is not None and key_file is not None:
        yield {"certfile": str(cert_file), "keyfile": str(key_file)}
        return
    names = list(names)
    cert_pem, key_pem, fingerprint = self_signed_pem(names)
    folder = Path(tempfile.mkdtemp(prefix="meshserve-metrics-tls-"))  # 0700
    try:
        cert_path, key_path = folder / "tls.crt", folder / "tls.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        cert_path.write_bytes(cert_pem)
        log.info(
            "metrics port :%d serves https with a self-signed certificate generated at start-up "
            "(no certificate configured; valid for %s; sha256 %s)",
            port, ", ".join(names), fingerprint,
        )
        yield {"certfile": str(cert_path), "keyfile": str(key_path)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
