"""Azure service principal auth (`client_id` / `client_secret` / `tenant_id`) for real:
Azurite started with `--oauth basic` over HTTPS (bearer tokens need HTTPS; the
certificate is made here), and a small HTTPS OAuth2 endpoint in this test that plays
Microsoft Entra ID: it serves the tenant's OpenID metadata, checks the client id and
secret of a client-credentials grant, and issues a JWT with the claims Azurite checks
(`iss` of sts.windows.net, `aud` https://storage.azure.com, `nbf`/`iat`/`exp`).
The puller's path is the production one: azure-identity's ClientSecretCredential,
pointed at the endpoint with the key's `authority_host`, trusting its CA through the
key's `certificate`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from azure.storage.blob import BlobServiceClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup, free_port, tcp_open
from meshserve.common.errors import FailedPrecondition, Unavailable
from meshserve.common.logging import redact_text
from meshserve.puller import storage

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # Azurite's published key
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0f4a7c52-5c8e-4a7e-9c39-5d1c3b2f7a11"
CLIENT_SECRET = "sp-Secret~Value.for-the-test-0123"
CONTAINER = "spmodels"
BODY = b"model bytes behind a service principal " * 100


@dataclass
class Tls:
    ca_pem: str
    cert_file: Path
    key_file: Path
    ca_file: Path


def _make_tls(folder: Path) -> Tls:
    """A CA and a server certificate for 127.0.0.1 signed by it (files for Azurite and the token server)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshserve test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem).decode()
    files = Tls(ca_pem, folder / "server.pem", folder / "server.key", folder / "ca.pem")
    files.cert_file.write_bytes(cert.public_bytes(pem))
    files.key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )
    files.ca_file.write_text(ca_pem)
    return files


@dataclass
class Authority:
    url: str
    token_requests: list[dict[str, str]] = field(default_factory=list)


def _token_handler(authority: Authority) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            if self.path.endswith("/.well-known/openid-configuration") and parts[0] == TENANT:
                base = f"{authority.url}/{TENANT}"
                self._json(200, {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "issuer": f"{base}/v2.0",
                })
            else:
                self._json(400, {"error": "invalid_tenant", "error_description": f"AADSTS90002: Tenant '{parts[0]}' not found."})

        def do_POST(self) -> None:
            form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
            authority.token_requests.append(form)
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                self._json(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})
                return
            now = int(time.time())
            claims = {
                "aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{TENANT}/", "tid": TENANT,
                "appid": CLIENT_ID, "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
            }
            token = jwt.encode(claims, "signature-not-checked-by-azurite-basic-oauth-0123456789", algorithm="HS256")
            self._json(200, {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": token})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass
class Stack:
    tls: Tls
    blob_endpoint: str
    authority: Authority


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("azure-oauth")
    tls = _make_tls(folder)
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    authority = Authority(url=f"https://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _token_handler(authority)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="token-endpoint", daemon=True)
    thread.start()
    group = ProcessGroup(log_dir=folder / "logs")
    try:
        binary = infra.azurite_blob_binary()
        if not binary.exists():
            raise RuntimeError(f"Azurite is not installed at {binary}: run `make azurite`")
        port = free_port()
        (folder / "data").mkdir()
        proc = group.start("azurite-oauth", [
            str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder / "data"),
            "--silent", "--skipApiVersionCheck", "--disableTelemetry",
            "--oauth", "basic", "--cert", str(tls.cert_file), "--key", str(tls.key_file),
        ])
        group.wait_until(proc, tcp_open("127.0.0.1", port), timeout=60, what="starting Azurite (blob, HTTPS, OAuth)")
        endpoint = f"https://127.0.0.1:{port}/{ACCOUNT}"
        admin = BlobServiceClient(
            endpoint, credential={"account_name": ACCOUNT, "account_key": KEY}, connection_verify=str(tls.ca_file)
        )
        container = admin.create_container(CONTAINER)
        container.upload_blob("sklearn/model.joblib", BODY)
        container.upload_blob("folder/1/model.txt", b"abc")
        yield Stack(tls, endpoint, authority)
    finally:
        group.stop_all()
        server.shutdown()
        server.server_close()


def _config(stack: Stack, tmp_path: Path, **override: Any) -> storage.StorageConfig:
    entry = {
        "type": "azure", "account_name": ACCOUNT, "container": CONTAINER, "endpoint": stack.blob_endpoint,
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "tenant_id": TENANT,
        "authority_host": stack.authority.url, "certificate": stack.tls.ca_pem, **override,
    }
    d = tmp_path / "storage-config"
    d.mkdir(exist_ok=True)
    (d / "azureSP").write_text(json.dumps({k: v for k, v in entry.items() if v is not None}))
    return storage.load_storage_config(d, "azureSP", {})


def test_a_service_principal_token_downloads_the_blob(stack: Stack, tmp_path: Path) -> None:
    cfg = _config(stack, tmp_path)
    assert CLIENT_SECRET not in repr(cfg)
    before = len(stack.authority.token_requests)
    assert storage.predict_size(cfg, path="sklearn/model.joblib") == len(BODY)
    dest = tmp_path / "models" / "m1"
    assert storage.fetch(cfg, path="sklearn/model.joblib", dest=dest, pvc_mounts=tmp_path) == len(BODY)
    assert (dest / "model.joblib").read_bytes() == BODY
    assert storage.fetch(cfg, path="folder", dest=tmp_path / "models" / "m2", pvc_mounts=tmp_path) == 3
    grants = stack.authority.token_requests[before:]
    assert grants and all(g["grant_type"] == "client_credentials" for g in grants)
    assert {g["scope"] for g in grants} == {"https://storage.azure.com/.default"}
    # one credential per key, its token kept until it expires: not a token request per call
    assert len(grants) == 1


def test_without_a_token_azurite_refuses_the_private_container(stack: Stack, tmp_path: Path) -> None:
    """The control: the same key without the service principal is anonymous, and denied."""
    cfg = _config(stack, tmp_path, client_id=None, client_secret=None, tenant_id=None)
    with pytest.raises(FailedPrecondition) as err:
        storage.fetch(cfg, path="sklearn/model.joblib", dest=tmp_path / "m", pvc_mounts=tmp_path)
    assert "azureSP" in str(err.value)


def test_a_wrong_client_secret_is_refused_by_the_authority(stack: Stack, tmp_path: Path) -> None:
    wrong = "not-the-secret-of-this-client-987"
    cfg = _config(stack, tmp_path, client_secret=wrong)
    dest = tmp_path / "m3"
    with pytest.raises(FailedPrecondition, match="the authority refused a token for client id") as err:
        storage.fetch(cfg, path="sklearn/model.joblib", dest=dest, pvc_mounts=tmp_path)
    text = redact_text(str(err.value))
    assert str(err.value) == text  # nothing in it needed masking
    assert wrong not in str(err.value) and "'client_secret'" in str(err.value) and "storage key 'azureSP'" in str(err.value)
    assert not dest.exists() or not any(dest.iterdir())
    assert storage.predict_size(cfg, path="sklearn/model.joblib") == 0


def test_an_unreachable_authority_is_unavailable(stack: Stack, tmp_path: Path) -> None:
    cfg = _config(stack, tmp_path, authority_host=f"https://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(Unavailable, match="cannot reach the authority to get a token for client id"):
        storage.fetch(cfg, path="sklearn/model.joblib", dest=tmp_path / "m4", pvc_mounts=tmp_path)


def test_service_principal_fields_are_checked_before_any_request(stack: Stack, tmp_path: Path) -> None:
    cases = {
        "no secret": ({"client_secret": None}, "'client_secret' is required for service principal auth"),
        "no tenant": ({"tenant_id": None}, "'tenant_id' is required for service principal auth"),
        "bad tenant": ({"tenant_id": "no/such tenant"}, "'tenant_id' is not a valid tenant id"),
        "http endpoint": ({"endpoint": "http://127.0.0.1:1/devstoreaccount1"}, "bearer tokens, which need HTTPS"),
        "http authority": ({"authority_host": "http://127.0.0.1:1"}, "'authority_host' must be an https:// URL"),
    }
    before = len(stack.authority.token_requests)
    for name, (override, message) in cases.items():
        cfg = _config(stack, tmp_path, **override)
        with pytest.raises(FailedPrecondition, match=message) as err:
            storage.fetch(cfg, path="x", dest=tmp_path / "m5", pvc_mounts=tmp_path)
        assert CLIENT_SECRET not in str(err.value), name
    assert len(stack.authority.token_requests) == before
