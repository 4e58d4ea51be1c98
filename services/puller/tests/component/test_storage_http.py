"""The puller's HTTP(S) storage against a real TLS server in the test process that requires
a client certificate (mutual TLS), with CAs and certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshserve.common.errors import FailedPrecondition, MeshError
from meshserve.common.storage import parse_storage_uri
from meshserve.puller import storage

BODY = b"joblib model bytes " * 1000
TOKEN = "Bearer s3cr3t-http-token"


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()


def _issue(name: str, *, by: Issued | None = None, usage: x509.ObjectIdentifier | None = None) -> Issued:
    """A CA (no `by`), or a leaf signed by `by` for server or client use."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(by.cert.subject if by else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if by is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage or ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
    return Issued(builder.sign(by.key if by else key, hashes.SHA256()), key)


class _Files(BaseHTTPRequestHandler):
    seen_headers: list[dict[str, str]] = []

    def setup(self) -> None:
        self.request.do_handshake()  # here, in the handler's thread: a refused client fails only itself
        super().setup()

    def do_GET(self) -> None:
        self.seen_headers.append(dict(self.headers.items()))
        path, _, query = self.path.partition("?")
        if path == "/models/sklearn/model.joblib" and query == "raw=true":
            self._send(200, BODY)
        elif path == "/private/model.joblib":
            self._send(200, BODY) if self.headers.get("Authorization") == TOKEN else self._send(401, b"login")
        elif path == "/forbidden/model.joblib":
            self._send(403, b"no")
        elif path == "/moved/model.joblib":
            self.send_response(302)
            self.send_header("Location", "/models/sklearn/model.joblib?raw=true")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"not found")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _MutualTLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Files)
        self.context = context

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused handshakes are the point of some tests


@dataclass(frozen=True)
class Pki:
    server_ca: Issued
    client: Issued
    stranger: Issued
    """A client certificate from a CA the server does not trust."""
    other_ca: Issued
    url: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    server_ca, client_ca, other_ca = _issue("server CA"), _issue("client CA"), _issue("other CA")
    server = _issue("127.0.0.1", by=server_ca, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    folder = tmp_path_factory.mktemp("https")
    (folder / "server.pem").write_text(server.cert_pem)
    (folder / "server.key").write_text(server.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=client_ca.cert_pem)
    httpd = _MutualTLSServer(context)
    thread = threading.Thread(target=httpd.serve_forever, name="test-https", daemon=True)
    thread.start()
    try:
        yield Pki(
            server_ca=server_ca,
            client=_issue("puller", by=client_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH),
            stranger=_issue("stranger", by=other_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH),
            other_ca=other_ca,
            url=f"https://127.0.0.1:{httpd.server_address[1]}",
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _cfg(pki: Pki, uri_path: str, *, client: Issued | None = None, ca: Issued | None = None, **more: Any) -> tuple[storage.StorageConfig, str]:
    location = parse_storage_uri(f"{pki.url}/{uri_path}")
    fields: dict[str, Any] = {"type": "http", **location.params, "certificate": (ca or pki.server_ca).cert_pem, **more}
    if client is not None:
        fields.update(client_certificate=client.cert_pem, client_key=client.key_pem)
    return storage.StorageConfig("http", fields), location.path


def _fails(cfg: storage.StorageConfig, path: str, dest: Path, match: str, key: Issued | None = None) -> MeshError:
    with pytest.raises(FailedPrecondition, match=match) as err:
        storage.fetch(cfg, path=path, dest=dest, pvc_mounts=dest)
    assert "BEGIN" not in str(err.value) and "s3cr3t" not in str(err.value)
    assert not dest.exists() or not any(dest.iterdir())  # nothing half-written, no .part
    return err.value


def test_the_right_client_certificate_downloads_the_file(pki: Pki, tmp_path: Path) -> None:
    _Files.seen_headers.clear()
    cfg, path = _cfg(pki, "models/sklearn/model.joblib?raw=true", client=pki.client, headers={"X-Model-Source": "test"})
    dest = tmp_path / "ok"
    assert storage.fetch(cfg, path=path, dest=dest, pvc_mounts=tmp_path) == len(BODY)
    assert (dest / "model.joblib").read_bytes() == BODY
    assert sorted(p.name for p in dest.iterdir()) == ["model.joblib"]
    assert _Files.seen_headers[-1]["X-Model-Source"] == "test"


def test_headers_authorize_and_redirects_are_followed(pki: Pki, tmp_path: Path) -> None:
    cfg, path = _cfg(pki, "private/model.joblib", client=pki.client, headers={"Authorization": TOKEN})
    assert storage.fetch(cfg, path=path, dest=tmp_path / "private", pvc_mounts=tmp_path) == len(BODY)
    cfg, path = _cfg(pki, "moved/model.joblib", client=pki.client)
    assert storage.fetch(cfg, path=path, dest=tmp_path / "moved", pvc_mounts=tmp_path) == len(BODY)
    assert (tmp_path / "moved" / "model.joblib").read_bytes() == BODY


def test_without_a_client_certificate_the_handshake_is_refused(pki: Pki, tmp_path: Path) -> None:
    cfg, path = _cfg(pki, "models/sklearn/model.joblib?raw=true")
    _fails(cfg, path, tmp_path / "none", r"refused the TLS handshake .*'client_certificate' and 'client_key'")
    cfg, path = _cfg(pki, "models/sklearn/model.joblib?raw=true", client=pki.stranger)
    _fails(cfg, path, tmp_path / "stranger", r"refused the TLS handshake .*'client_certificate' and 'client_key'")


def test_a_server_certificate_from_another_ca_is_not_trusted(pki: Pki, tmp_path: Path) -> None:
    cfg, path = _cfg(pki, "models/sklearn/model.joblib?raw=true", client=pki.client, ca=pki.other_ca)
    err = _fails(cfg, path, tmp_path / "wrong-ca", r"TLS certificate of https://127.0.0.1:\d+/models/sklearn/model.joblib is not trusted .*'certificate'")
    assert "raw=true" not in str(err)  # the query may carry a token: never shown


def test_http_status_errors_name_the_url_and_the_field(pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        cfg, path = _cfg(pki, "nothing/here.bin", client=pki.client)
        _fails(cfg, path, tmp_path / "404", r"no file at https://127.0.0.1:\d+/nothing/here.bin \(HTTP 404\)")
        cfg, path = _cfg(pki, "private/model.joblib", client=pki.client, headers={"Authorization": "Bearer wrong-s3cr3t"})
        _fails(cfg, path, tmp_path / "401", r"access to .*/private/model.joblib was denied \(HTTP 401\).*'headers'")
        cfg, path = _cfg(pki, "forbidden/model.joblib", client=pki.client)
        _fails(cfg, path, tmp_path / "403", r"denied \(HTTP 403\)")
    assert "BEGIN PRIVATE KEY" not in caplog.text and "s3cr3t" not in caplog.text


def test_bad_tls_fields_name_the_field_never_the_key(pki: Pki, tmp_path: Path) -> None:
    cfg, path = _cfg(pki, "models/sklearn/model.joblib?raw=true", client_key=pki.client.key_pem)
    _fails(cfg, path, tmp_path / "half", r"field 'client_certificate' is required")
    cfg, path = _cfg(pki, "models/sklearn/model.joblib?raw=true", client_certificate=pki.client.cert_pem, client_key=pki.stranger.key_pem)
    _fails(cfg, path, tmp_path / "mismatch", r"'client_certificate' and 'client_key' are not a matching")
    cfg, path = _cfg(pki, "models/sklearn/model.joblib?raw=true", client=pki.client, headers="not json")
    _fails(cfg, path, tmp_path / "headers", r"field 'headers' must be a JSON object")
    no_url = storage.StorageConfig("http", {"type": "http"})
    _fails(no_url, "m.bin", tmp_path / "nourl", r"required configuration 'url' missing")
