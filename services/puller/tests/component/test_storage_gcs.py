"""The puller's GCS storage against a real GCS emulator process (gcp-storage-emulator).

The emulator checks no credentials, so the service-account path gets a small OAuth token
endpoint on loopback (Google's token_uri protocol: a signed JWT in, an access token out)
that either grants or rejects; the emulator then serves the authorised requests.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup, free_port
from meshserve.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from meshserve.common.storage import parse_storage_uri
from meshserve.puller import storage
from meshserve.puller.storage import RemoteObject

BUCKET = "puller-test-bucket"
CLIENT_EMAIL = "puller@meshserve-test.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def gcs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("gcs-logs"))
    url = infra.start_gcs(group)
    try:
        bucket = _admin(url).create_bucket(BUCKET)
        for key, body in {
            "single/model.joblib": b"x" * 100,
            "folder/": b"",  # a console-made folder placeholder: not a file of the model
            "folder/1/model.txt": b"abc",
            "folder/config.pbtxt": b"cfg",
        }.items():
            bucket.blob(key).upload_from_string(body)
        yield url
    finally:
        group.stop_all()


def _admin(url: str) -> gcs.Client:
    anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
    return gcs.Client(project="test", credentials=anonymous, client_options={"api_endpoint": url})


class _TokenEndpoint(BaseHTTPRequestHandler):
    """`/token` grants any JWT-bearer grant, `/reject` refuses it as Google does for a bad key."""

    grants: list[dict[str, object]] = []

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        claims = json.loads(base64.urlsafe_b64decode(form["assertion"][0].split(".")[1] + "=="))
        if self.path == "/token":
            self.grants.append(claims)
            self._reply(200, {"access_token": "test-access-token", "expires_in": 3600, "token_type": "Bearer"})
        else:
            self._reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})

    def _reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def token_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    thread = threading.Thread(target=server.serve_forever, name="token-endpoint", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def config_dir(tmp_path: Path, gcs_url: str, token_url: str, private_key: str) -> Path:
    d = tmp_path / "storage-config"
    d.mkdir()
    anonymous = {"type": "gcs", "endpoint": gcs_url, "bucket": BUCKET}
    account = {**anonymous, "private_key": private_key, "client_email": CLIENT_EMAIL, "project_id": "meshserve-test"}
    (d / "gcsAnonymous").write_text(json.dumps(anonymous))
    (d / "gcsAccount").write_text(json.dumps({**account, "token_uri": f"{token_url}/token"}))
    (d / "gcsRejected").write_text(json.dumps({**account, "token_uri": f"{token_url}/reject"}))
    return d


def test_single_object_from_a_gs_uri_and_refetch_skips_it(config_dir: Path, tmp_path: Path) -> None:
    location = parse_storage_uri(f"gs://{BUCKET}/single/model.joblib")
    cfg = storage.load_storage_config(config_dir, "gcsAnonymous", location.params)
    dest = tmp_path / "models" / "m1"
    assert storage.predict_size(cfg, path=location.path) == 100
    assert storage.fetch(cfg, path=location.path, dest=dest, pvc_mounts=tmp_path) == 100
    assert (dest / "model.joblib").read_bytes() == b"x" * 100
    mtime = (dest / "model.joblib").stat().st_mtime_ns
    assert storage.fetch(cfg, path=location.path, dest=dest, pvc_mounts=tmp_path) == 100
    assert (dest / "model.joblib").stat().st_mtime_ns == mtime  # unchanged: not downloaded again


def test_a_changed_object_is_downloaded_again(config_dir: Path, gcs_url: str, tmp_path: Path) -> None:
    blob = _admin(gcs_url).bucket(BUCKET).blob("changing/model.bin")
    blob.upload_from_string(b"a" * 10)
    cfg = storage.load_storage_config(config_dir, "gcsAnonymous", {})
    dest = tmp_path / "m2"
    storage.fetch(cfg, path="changing/model.bin", dest=dest, pvc_mounts=tmp_path)
    blob.upload_from_string(b"b" * 10)  # same size, new bytes: only the md5 in the manifest tells
    storage.fetch(cfg, path="changing/model.bin", dest=dest, pvc_mounts=tmp_path)
    assert (dest / "model.bin").read_bytes() == b"b" * 10


def test_prefix_keeps_its_tree(config_dir: Path, tmp_path: Path) -> None:
    cfg = storage.load_storage_config(config_dir, "gcsAnonymous", {})
    dest = tmp_path / "m3"
    assert storage.fetch(cfg, path="folder", dest=dest, pvc_mounts=tmp_path) == 6
    assert (dest / "1" / "model.txt").read_bytes() == b"abc"
    assert (dest / "config.pbtxt").read_bytes() == b"cfg"
    assert sorted(p.name for p in dest.iterdir()) == [".meshserve-files.json", "1", "config.pbtxt"]
    assert storage.predict_size(cfg, path="folder/") == 6


def test_service_account_gets_a_token_from_token_uri(config_dir: Path, tmp_path: Path, private_key: str) -> None:
    cfg = storage.load_storage_config(config_dir, "gcsAccount", {})
    assert "PRIVATE KEY" not in repr(cfg)
    _TokenEndpoint.grants.clear()
    assert storage.fetch(cfg, path="folder", dest=tmp_path / "m4", pvc_mounts=tmp_path) == 6
    assert storage.predict_size(cfg, path="folder") == 6
    assert [g["iss"] for g in _TokenEndpoint.grants] == [CLIENT_EMAIL]  # one token, reused
    assert "devstorage.read_only" in str(_TokenEndpoint.grants[0]["scope"])


def test_rejected_or_broken_credentials_are_clear_failures(config_dir: Path, tmp_path: Path, private_key: str) -> None:
    cfg = storage.load_storage_config(config_dir, "gcsRejected", {})
    with pytest.raises(FailedPrecondition, match="service account in the storage config was rejected") as rejected:
        storage.fetch(cfg, path="folder", dest=tmp_path / "m5", pvc_mounts=tmp_path)
    broken = storage.load_storage_config(config_dir, "gcsAccount", {"private_key": "not-a-pem-key-0123456789"})
    with pytest.raises(FailedPrecondition, match="'private_key' is not a valid PEM private key") as bad:
        storage.fetch(broken, path="folder", dest=tmp_path / "m5", pvc_mounts=tmp_path)
    for err in (rejected.value, bad.value):
        assert "PRIVATE KEY" not in str(err) and "not-a-pem-key" not in str(err)
    entry = json.loads((config_dir / "gcsAccount").read_text())
    del entry["client_email"]
    (config_dir / "gcsNoEmail").write_text(json.dumps(entry))
    no_email = storage.load_storage_config(config_dir, "gcsNoEmail", {})
    with pytest.raises(FailedPrecondition, match="'client_email' is required"):
        storage.predict_size(no_email, path="folder")


def test_missing_object_bucket_and_field_are_clear_failures(config_dir: Path, tmp_path: Path) -> None:
    cfg = storage.load_storage_config(config_dir, "gcsAnonymous", {})
    with pytest.raises(FailedPrecondition, match=f"no object or prefix at gs://{BUCKET}/invalid/Storage/Path"):
        storage.fetch(cfg, path="invalid/Storage/Path", dest=tmp_path / "m6", pvc_mounts=tmp_path)
    other = storage.load_storage_config(config_dir, "gcsAnonymous", {"bucket": "no-such-bucket"})
    with pytest.raises(FailedPrecondition, match="bucket 'no-such-bucket' does not exist"):
        storage.fetch(other, path="x", dest=tmp_path / "m7", pvc_mounts=tmp_path)
    assert storage.predict_size(other, path="x") == 0
    (config_dir / "noBucket").write_text(json.dumps({"type": "gcs", "endpoint": cfg.fields["endpoint"]}))
    with pytest.raises(FailedPrecondition, match="'bucket' missing"):
        storage.fetch(storage.load_storage_config(config_dir, "noBucket", {}), path="x", dest=tmp_path, pvc_mounts=tmp_path)


def test_unreachable_endpoint_fails_fast(config_dir: Path, tmp_path: Path) -> None:
    cfg = storage.load_storage_config(config_dir, "gcsAnonymous", {"endpoint": f"http://127.0.0.1:{free_port()}"})
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot reach the GCS endpoint"):
        storage.fetch(cfg, path="folder", dest=tmp_path / "m8", pvc_mounts=tmp_path)
    assert storage.predict_size(cfg, path="folder") == 0
    assert time.monotonic() - started < 5


def test_objects_cannot_be_written_outside_the_model_folder(config_dir: Path, tmp_path: Path) -> None:
    # the emulator refuses `..` in object names (real GCS does not), so the key rule is
    # checked on the shared download loop; the symlink case goes through the emulator
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "m9"
    dest.mkdir()
    (dest / "1").symlink_to(outside)  # a folder that leads out: `folder/1/model.txt` must not follow it
    cfg = storage.load_storage_config(config_dir, "gcsAnonymous", {})
    with pytest.raises(InvalidArgument, match="leaves the model directory"):
        storage.fetch(cfg, path="folder", dest=dest, pvc_mounts=tmp_path)
    assert list(outside.iterdir()) == []
    assert not (dest / "config.pbtxt").exists()  # every path is checked before any download

    def download(obj: RemoteObject, tmp: Path) -> None:
        tmp.write_bytes(b"nope")

    evil = [RemoteObject("evil/ok.txt", 2, "v1"), RemoteObject("evil/../../../escape.txt", 4, "v1")]
    with pytest.raises(InvalidArgument, match=r"may not contain '\.\.'"):
        storage.sync_objects(evil, path="evil", dest=tmp_path / "m10", download=download)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "m10" / "ok.txt").exists()
