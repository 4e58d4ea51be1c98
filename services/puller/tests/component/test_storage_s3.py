"""The puller's storage layer against a real S3 endpoint (moto server process).

Network faults and TLS come from a proxy in the test process between the puller and
moto: it cuts one connection mid-transfer, corrupts bytes, or terminates TLS with a
certificate of a CA made here.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import io
import ipaddress
import json
import logging
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup
from meshserve.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from meshserve.puller import storage, storage_s3, storage_tls
from meshserve.puller.storage import RemoteObject

BUCKET = "puller-test-bucket"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("s3-logs"))
    endpoint = infra.start_s3(group)
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="single/model.joblib", Body=b"x" * 100)
    client.put_object(Bucket=BUCKET, Key="folder/1/model.txt", Body=b"abc")
    client.put_object(Bucket=BUCKET, Key="folder/config.pbtxt", Body=b"cfg")
    client.put_object(Bucket=BUCKET, Key="evil/../../../escape.txt", Body=b"nope")
    yield endpoint
    group.stop_all()


def _admin(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1")


@pytest.fixture
def config_dir(tmp_path: Path, s3: str) -> Path:
    d = tmp_path / "storage-config"
    d.mkdir()
    entry = {"type": "s3", "access_key_id": "k", "secret_access_key": "very-secret-key", "endpoint_url": s3, "default_bucket": BUCKET}
    (d / "localMinIO").write_text(json.dumps(entry))
    (d / "default").write_text(json.dumps(entry))
    return d


def test_single_object_lands_under_the_model_folder(config_dir: Path, tmp_path: Path) -> None:
    cfg = storage.load_storage_config(config_dir, "localMinIO", {})
    assert cfg.fields["bucket"] == BUCKET  # default_bucket alias
    assert "very-secret-key" not in repr(cfg)
    dest = tmp_path / "models" / "m1"
    assert storage.fetch(cfg, path="single/model.joblib", dest=dest, pvc_mounts=tmp_path) == 100
    assert (dest / "model.joblib").read_bytes() == b"x" * 100
    # second fetch: already on disk and unchanged (same bytes reported, file untouched)
    mtime = (dest / "model.joblib").stat().st_mtime_ns
    assert storage.fetch(cfg, path="single/model.joblib", dest=dest, pvc_mounts=tmp_path) == 100
    assert (dest / "model.joblib").stat().st_mtime_ns == mtime


def test_prefix_keeps_its_tree(config_dir: Path, tmp_path: Path) -> None:
    cfg = storage.load_storage_config(config_dir, None, {"type": "s3"})
    dest = tmp_path / "m2"
    assert storage.fetch(cfg, path="folder", dest=dest, pvc_mounts=tmp_path) == 6
    assert (dest / "1" / "model.txt").read_bytes() == b"abc"
    assert (dest / "config.pbtxt").read_bytes() == b"cfg"
    assert storage.predict_size(cfg, path="folder") == 6


def test_keys_cannot_escape_the_model_folder(config_dir: Path, tmp_path: Path) -> None:
    cfg = storage.load_storage_config(config_dir, "localMinIO", {})
    with pytest.raises(InvalidArgument):
        storage.fetch(cfg, path="evil", dest=tmp_path / "m3", pvc_mounts=tmp_path)
    assert not (tmp_path / "escape.txt").exists()


def test_missing_object_and_bucket_are_clear_failures(config_dir: Path, tmp_path: Path) -> None:
    cfg = storage.load_storage_config(config_dir, "localMinIO", {})
    with pytest.raises(FailedPrecondition, match="no object or prefix at s3://puller-test-bucket/invalid/Storage/Path"):
        storage.fetch(cfg, path="invalid/Storage/Path", dest=tmp_path / "m4", pvc_mounts=tmp_path)
    other = storage.load_storage_config(config_dir, "localMinIO", {"bucket": "no-such-bucket"})
    with pytest.raises(FailedPrecondition, match="no-such-bucket"):
        storage.fetch(other, path="x", dest=tmp_path / "m5", pvc_mounts=tmp_path)


def test_errors_name_the_storage_key(config_dir: Path, tmp_path: Path) -> None:
    cfg = storage.load_storage_config(config_dir, "localMinIO", {})
    assert cfg.key == "localMinIO" and storage.load_storage_config(config_dir, None, {}).key == "default"
    with pytest.raises(FailedPrecondition, match=r"^storage key 'localMinIO': no object or prefix at s3://"):
        storage.fetch(cfg, path="invalid/Storage/Path", dest=tmp_path / "k", pvc_mounts=tmp_path)
    wrong_type = storage.load_storage_config(config_dir, "localMinIO", {"type": "ftp"})
    with pytest.raises(FailedPrecondition, match=r"^storage key 'localMinIO': storage type 'ftp' is not supported"):
        storage.fetch(wrong_type, path="x", dest=tmp_path / "k", pvc_mounts=tmp_path)


def test_storage_config_rules_follow_the_modelmesh_puller(config_dir: Path) -> None:
    with pytest.raises(FailedPrecondition, match="Did not find storage config for key nope: Storage secretKey not found: nope"):
        storage.load_storage_config(config_dir, "nope", {})
    with pytest.raises(FailedPrecondition, match="Did not find storage config"):
        storage.load_storage_config(config_dir, "../etc/passwd", {})
    (config_dir / "default").unlink()
    with pytest.raises(FailedPrecondition, match="Predictor Storage field missing"):
        storage.load_storage_config(config_dir, None, {})


# --- a proxy in this process, between the puller and moto ------------------------------


class Proxy:
    """A TCP proxy on 127.0.0.1:0 in front of `upstream_port`, run by an asyncio loop in a
    thread of the test process. `cut_after`: the first connection that carries more than
    this many bytes back is cut there (once), as a dropped connection mid-transfer would be.
    `corrupt`: (old, new) bytes replaced in every response. `tls`: terminate TLS with it."""

    def __init__(
        self,
        upstream_port: int,
        *,
        cut_after: int | None = None,
        corrupt: tuple[bytes, bytes] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.upstream_port, self.cut_after, self.corrupt = upstream_port, cut_after, corrupt
        self.connections = 0
        self.cuts = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-proxy", daemon=True)
        self.thread.start()
        start = asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=tls)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(timeout=10)
        self.port = int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def upstream() -> None:
            while data := await reader.read(1 << 16):
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            sent = 0
            while data := await up_reader.read(1 << 16):
                if self.corrupt:
                    data = data.replace(*self.corrupt)
                if self.cut_after is not None and not self.cuts and sent + len(data) > self.cut_after:
                    self.cuts += 1
                    writer.write(data[: self.cut_after - sent])
                    await writer.drain()
                    writer.transport.abort()
                    return
                sent += len(data)
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _entry(endpoint: str, **more: object) -> dict[str, object]:
    return {"type": "s3", "access_key_id": "k", "secret_access_key": "very-secret-key", "endpoint_url": endpoint,
            "bucket": BUCKET, **more}


def _cfg(endpoint: str, **more: object) -> storage.StorageConfig:
    return storage.StorageConfig(type="s3", fields=_entry(endpoint, **more))


# --- large, many, dropped, corrupt ------------------------------------------------------


def test_a_multipart_object_larger_than_a_part_streams_to_disk(s3: str, tmp_path: Path) -> None:
    body = os.urandom(20 << 20)
    admin = _admin(s3)
    small_parts = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    admin.upload_fileobj(io.BytesIO(body), BUCKET, "large/model.bin", Config=small_parts)
    assert "-" in admin.head_object(Bucket=BUCKET, Key="large/model.bin")["ETag"]  # a multipart ETag: no MD5
    assert storage_s3.PART_BYTES < len(body)  # fetched as ranged GETs, not one body in memory
    dest = tmp_path / "large"
    assert storage.fetch(_cfg(s3), path="large/model.bin", dest=dest, pvc_mounts=tmp_path) == len(body)
    assert hashlib.sha256((dest / "model.bin").read_bytes()).digest() == hashlib.sha256(body).digest()
    assert not list(dest.glob("*.part"))


def test_many_files_download_in_parallel_and_the_manifest_lists_them_all(s3: str, tmp_path: Path) -> None:
    admin = _admin(s3)
    files = {f"many/{i // 10}/file-{i}.txt": f"body {i}".encode() for i in range(40)}
    for key, body in files.items():
        admin.put_object(Bucket=BUCKET, Key=key, Body=body)
    dest = tmp_path / "many"
    assert storage.fetch(_cfg(s3), path="many", dest=dest, pvc_mounts=tmp_path) == sum(map(len, files.values()))
    for key, body in files.items():
        assert (dest / key.removeprefix("many/")).read_bytes() == body
    manifest = json.loads((dest / storage.MANIFEST).read_text())
    assert sorted(manifest) == sorted(key.removeprefix("many/") for key in files)


def test_a_connection_dropped_mid_transfer_is_retried_and_the_file_is_whole(
    s3: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = os.urandom(1 << 20)
    _admin(s3).put_object(Bucket=BUCKET, Key="dropped/model.bin", Body=body)
    proxy = Proxy(_port(s3), cut_after=256 << 10)
    try:
        dest = tmp_path / "dropped"
        with caplog.at_level(logging.WARNING, logger="meshserve.puller.storage_s3"):
            size = storage.fetch(_cfg(f"http://127.0.0.1:{proxy.port}"), path="dropped/model.bin", dest=dest, pvc_mounts=tmp_path)
        assert proxy.cuts == 1 and proxy.connections >= 2
    finally:
        proxy.close()
    assert size == len(body)
    assert (dest / "model.bin").read_bytes() == body
    assert "retrying, attempt 2 of 3" in caplog.text and "s3://puller-test-bucket/dropped/model.bin" in caplog.text


def test_corrupt_bytes_fail_the_md5_check_and_nothing_is_left(s3: str, tmp_path: Path) -> None:
    # uploaded without a flexible checksum: the ETag (MD5) is the only check of the bytes
    plain = boto3.client(
        "s3", endpoint_url=s3, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1",
        config=BotoConfig(request_checksum_calculation="when_required"),
    )
    plain.put_object(Bucket=BUCKET, Key="corrupt/model.bin", Body=b"0123456789 CORRUPT-ME " * 40)
    proxy = Proxy(_port(s3), corrupt=(b"CORRUPT-ME", b"CORRUPT-US"))
    dest = tmp_path / "corrupt"
    try:
        with pytest.raises(Unavailable, match=r"s3://puller-test-bucket/corrupt/model.bin: .* MD5") as err:
            storage.fetch(_cfg(f"http://127.0.0.1:{proxy.port}"), path="corrupt/model.bin", dest=dest, pvc_mounts=tmp_path)
    finally:
        proxy.close()
    assert "very-secret-key" not in str(err.value)
    assert sorted(p.name for p in dest.iterdir()) == [storage.MANIFEST]  # no model file, no .part
    assert json.loads((dest / storage.MANIFEST).read_text()) == {}


def test_a_size_or_md5_other_than_the_listing_is_unavailable(s3: str, tmp_path: Path) -> None:
    client, bucket = storage_s3.client_for(_entry(s3))
    head = client.head_object(Bucket=BUCKET, Key="single/model.joblib")
    download = functools.partial(storage_s3.download, client, bucket)
    for wrong, message in (
        (RemoteObject("single/model.joblib", 99, head["ETag"]), "downloaded 100 bytes, the listing said 99"),
        (RemoteObject("single/model.joblib", 100, '"' + "0" * 32 + '"'), "do not match the object's MD5"),
    ):
        dest = tmp_path / f"wrong-{wrong.size}"
        with pytest.raises(Unavailable, match=message):
            storage.sync_objects([wrong], path="single/model.joblib", dest=dest, download=download)
        assert sorted(p.name for p in dest.iterdir()) == [storage.MANIFEST]


def test_virtual_host_and_path_addressing(s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # moto reads the bucket from the Host header when it is not an IP or localhost; the test
    # resolves *.s3.test to loopback itself, as a DNS wildcard record would
    real = socket.getaddrinfo

    def resolve(host: str, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if str(host).endswith("s3.test") else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    named = f"http://s3.test:{_port(s3)}"
    virtual = _cfg(named, addressing_style="virtual")
    client, _ = storage_s3.client_for(virtual.fields)
    assert client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"}).startswith(
        f"http://{BUCKET}.s3.test:{_port(s3)}/k"
    )
    dest = tmp_path / "virtual"
    assert storage.fetch(virtual, path="single/model.joblib", dest=dest, pvc_mounts=tmp_path) == 100
    assert (dest / "model.joblib").read_bytes() == b"x" * 100
    for path_style in (_cfg(named, addressing_style="path"), _cfg(named, s3_force_path_style="true")):
        client, _ = storage_s3.client_for(path_style.fields)
        assert client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"}).startswith(
            f"{named}/{BUCKET}/k"
        )
    with pytest.raises(FailedPrecondition, match="addressing_style"):
        storage.fetch(_cfg(s3, addressing_style="sideways"), path="x", dest=tmp_path / "bad", pvc_mounts=tmp_path)


# --- bad input --------------------------------------------------------------------------


def test_wrong_credentials_are_denied_without_echoing_them(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("s3-auth-logs"))
    try:
        endpoint = infra.start_s3_checking_credentials(group)
        cfg = _cfg(endpoint, access_key_id="AKIAWRONGWRONGWRONG1")
        with pytest.raises(FailedPrecondition, match=r"access to s3://puller-test-bucket/single/model.joblib was denied") as err:
            storage.fetch(cfg, path="single/model.joblib", dest=tmp_path / "denied", pvc_mounts=tmp_path)
        assert "very-secret-key" not in str(err.value) and "AKIAWRONG" not in str(err.value)
        assert storage.predict_size(cfg, path="single/model.joblib") == 0
    finally:
        group.stop_all()
    assert not (tmp_path / "denied" / "model.joblib").exists()


def test_missing_fields_and_unknown_types_name_the_field(s3: str, tmp_path: Path) -> None:
    no_bucket = storage.StorageConfig(type="s3", fields={"type": "s3", "endpoint_url": s3})
    with pytest.raises(FailedPrecondition, match="required configuration 'bucket' missing"):
        storage.fetch(no_bucket, path="x", dest=tmp_path / "a", pvc_mounts=tmp_path)
    with pytest.raises(FailedPrecondition, match=r"storage type 'ftp' is not supported .* field 'type'"):
        storage.fetch(storage.StorageConfig("ftp", {"type": "ftp"}), path="x", dest=tmp_path / "b", pvc_mounts=tmp_path)
    assert not (tmp_path / "b").exists()
    with pytest.raises(FailedPrecondition, match="field 'certificate' must hold PEM text"):
        storage.fetch(_cfg(s3, certificate="/etc/ssl/ca.pem"), path="x", dest=tmp_path / "c", pvc_mounts=tmp_path)
    with pytest.raises(FailedPrecondition, match="field 'certificate' is not a valid PEM CA"):
        bogus = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----"
        storage.fetch(_cfg(s3, certificate=bogus), path="x", dest=tmp_path / "d", pvc_mounts=tmp_path)


# --- TLS: moto behind a TLS-terminating proxy -------------------------------------------


def _make_ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _server_context(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], folder: Path) -> ssl.SSLContext:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return context


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_s3_over_tls_needs_the_certificate_field(s3: str, tmp_path: Path) -> None:
    ca = _make_ca("meshserve test S3 CA")
    proxy = Proxy(_port(s3), tls=_server_context(ca, tmp_path))
    endpoint = f"https://127.0.0.1:{proxy.port}"
    try:
        # the PEM as a secret holds it: JSON text with real newlines, or with "\n" escapes kept
        for pem in (_pem(ca[0]), _pem(ca[0]).replace("\n", "\\n")):
            dest = tmp_path / f"tls-{len(pem)}"
            assert storage.fetch(_cfg(endpoint, certificate=pem), path="folder", dest=dest, pvc_mounts=tmp_path) == 6
            assert (dest / "1" / "model.txt").read_bytes() == b"abc"
        bundle = Path(storage_tls.ca_bundle_file(storage_tls.pem_text(_pem(ca[0]), field="certificate")))  # cached: the one used
        assert stat.S_IMODE(bundle.stat().st_mode) == 0o600 and stat.S_IMODE(bundle.parent.stat().st_mode) == 0o700
        with pytest.raises(FailedPrecondition, match=r"TLS verification of the S3 endpoint failed .*certificate verify failed.*field 'certificate'"):
            storage.fetch(_cfg(endpoint), path="folder", dest=tmp_path / "untrusted", pvc_mounts=tmp_path)
        other = _make_ca("another CA")
        with pytest.raises(FailedPrecondition, match="certificate verify failed"):
            storage.fetch(_cfg(endpoint, certificate=_pem(other[0])), path="folder", dest=tmp_path / "wrong", pvc_mounts=tmp_path)
    finally:
        proxy.close()
    assert not any((tmp_path / "untrusted").iterdir())
