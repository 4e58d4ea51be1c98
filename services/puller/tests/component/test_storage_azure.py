"""The puller's Azure Blob storage against a real Azurite process (Microsoft's emulator,
which checks the shared-key signature of every request).

Azurite comes from npm, not PyPI: `make azurite` installs it under `.tools/azurite/`
(see `meshserve.cli.infra.azurite_blob_binary`). Without it these tests fail, and say so.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup, free_port
from meshserve.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from meshserve.common.logging import redact_text
from meshserve.common.storage import parse_storage_uri
from meshserve.puller import storage

# Azurite's built-in development account: a published, well-known key, not a secret
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
WRONG_KEY = base64.b64encode(b"this is not the account key of devstoreaccount1 at all!").decode()
CONTAINER = "models"


def _connection_string(blob_endpoint: str, key: str = KEY) -> str:
    return f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};BlobEndpoint={blob_endpoint};"


@pytest.fixture(scope="module")
def blob_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("azurite-logs"))
    try:
        endpoint = infra.start_azurite(group)
        container = BlobServiceClient.from_connection_string(_connection_string(endpoint)).create_container(CONTAINER)
        for key, body in {
            "single/model.joblib": b"x" * 100,
            "folder/1/model.txt": b"abc",
            "folder/config.pbtxt": b"cfg",
        }.items():
            container.upload_blob(key, body)
        container.upload_blob("folder/2", b"", metadata={"hdi_isfolder": "true"})  # an ADLS folder marker
        yield endpoint
    finally:
        group.stop_all()


@pytest.fixture
def config_dir(tmp_path: Path, blob_endpoint: str) -> Path:
    d = tmp_path / "storage-config"
    d.mkdir()
    by_string = {"type": "azure", "connection_string": _connection_string(blob_endpoint), "container": CONTAINER}
    by_key = {"type": "azure", "account_name": ACCOUNT, "account_key": KEY, "endpoint": blob_endpoint, "container": CONTAINER}
    (d / "azureString").write_text(json.dumps(by_string))
    (d / "azureKey").write_text(json.dumps(by_key))
    (d / "azureWrongKey").write_text(json.dumps({**by_key, "account_key": WRONG_KEY}))
    return d


def test_single_blob_from_an_azure_uri_and_refetch_skips_it(config_dir: Path, tmp_path: Path) -> None:
    location = parse_storage_uri(f"https://{ACCOUNT}.blob.core.windows.net/{CONTAINER}/single/model.joblib")
    cfg = storage.load_storage_config(config_dir, "azureKey", location.params)  # endpoint: Azurite's
    assert KEY not in repr(cfg)
    dest = tmp_path / "models" / "m1"
    assert storage.predict_size(cfg, path=location.path) == 100
    assert storage.fetch(cfg, path=location.path, dest=dest, pvc_mounts=tmp_path) == 100
    assert (dest / "model.joblib").read_bytes() == b"x" * 100
    mtime = (dest / "model.joblib").stat().st_mtime_ns
    assert storage.fetch(cfg, path=location.path, dest=dest, pvc_mounts=tmp_path) == 100
    assert (dest / "model.joblib").stat().st_mtime_ns == mtime  # unchanged: not downloaded again


def test_a_changed_blob_is_downloaded_again(config_dir: Path, blob_endpoint: str, tmp_path: Path) -> None:
    container = BlobServiceClient.from_connection_string(_connection_string(blob_endpoint)).get_container_client(CONTAINER)
    container.upload_blob("changing/model.bin", b"a" * 10, overwrite=True)
    cfg = storage.load_storage_config(config_dir, "azureString", {})
    dest = tmp_path / "m2"
    storage.fetch(cfg, path="changing/model.bin", dest=dest, pvc_mounts=tmp_path)
    container.upload_blob("changing/model.bin", b"b" * 10, overwrite=True)  # same size: the ETag tells
    storage.fetch(cfg, path="changing/model.bin", dest=dest, pvc_mounts=tmp_path)
    assert (dest / "model.bin").read_bytes() == b"b" * 10


@pytest.mark.parametrize("key", ["azureString", "azureKey"])
def test_prefix_keeps_its_tree(config_dir: Path, tmp_path: Path, key: str) -> None:
    cfg = storage.load_storage_config(config_dir, key, {})
    dest = tmp_path / "m3"
    assert storage.fetch(cfg, path="folder", dest=dest, pvc_mounts=tmp_path) == 6
    assert (dest / "1" / "model.txt").read_bytes() == b"abc"
    assert (dest / "config.pbtxt").read_bytes() == b"cfg"
    assert sorted(p.name for p in dest.iterdir()) == [".meshserve-files.json", "1", "config.pbtxt"]
    assert storage.predict_size(cfg, path="folder/") == 6


def test_a_wrong_account_key_is_denied(config_dir: Path, blob_endpoint: str, tmp_path: Path) -> None:
    for cfg in (
        storage.load_storage_config(config_dir, "azureWrongKey", {}),
        storage.load_storage_config(config_dir, "azureString", {"connection_string": _connection_string(blob_endpoint, WRONG_KEY)}),
    ):
        with pytest.raises(FailedPrecondition, match="was denied \\(HTTP 403") as denied:
            storage.fetch(cfg, path="folder", dest=tmp_path / "m4", pvc_mounts=tmp_path)
        assert WRONG_KEY not in str(denied.value) and KEY not in str(denied.value)
        assert storage.predict_size(cfg, path="folder") == 0
    not_base64 = storage.load_storage_config(config_dir, "azureKey", {"account_key": "not base64!"})
    with pytest.raises(FailedPrecondition, match="account key is not valid base64"):
        storage.fetch(not_base64, path="folder", dest=tmp_path / "m4", pvc_mounts=tmp_path)


def test_missing_blob_container_and_fields_are_clear_failures(
    config_dir: Path, blob_endpoint: str, tmp_path: Path
) -> None:
    cfg = storage.load_storage_config(config_dir, "azureString", {})
    with pytest.raises(FailedPrecondition, match=f"no object or prefix at {blob_endpoint}/{CONTAINER}/invalid/Storage/Path"):
        storage.fetch(cfg, path="invalid/Storage/Path", dest=tmp_path / "m5", pvc_mounts=tmp_path)
    other = storage.load_storage_config(config_dir, "azureKey", {"container": "no-such-container"})
    with pytest.raises(FailedPrecondition, match=f"container 'no-such-container' does not exist in storage account '{ACCOUNT}'"):
        storage.fetch(other, path="x", dest=tmp_path / "m6", pvc_mounts=tmp_path)
    assert storage.predict_size(other, path="x") == 0
    cases = {
        "no container": ({"type": "azure", "connection_string": "x"}, "'container' missing"),
        "bad string": ({"type": "azure", "connection_string": "garbage", "container": "c"}, "'connection_string' is malformed"),
        "no account": ({"type": "azure", "container": "c"}, "'account_name' \\(or 'connection_string'\\) missing"),
        "service principal without a tenant": (  # the full flow: test_storage_azure_identity.py
            {"type": "azure", "account_name": ACCOUNT, "container": "c", "client_id": "i", "client_secret": "sp-secret-value"},
            "'tenant_id' is required for service principal auth",
        ),
    }
    for name, (entry, message) in cases.items():
        (config_dir / "case").write_text(json.dumps(entry))
        with pytest.raises(FailedPrecondition, match=message) as err:
            storage.fetch(storage.load_storage_config(config_dir, "case", {}), path="x", dest=tmp_path, pvc_mounts=tmp_path)
        assert "sp-secret-value" not in str(err.value), name


def test_keys_inside_a_connection_string_are_masked_in_logs(config_dir: Path) -> None:
    storage.load_storage_config(config_dir, "azureString", {})
    assert redact_text(f"signing with {KEY} failed") == "signing with ********** failed"


def test_unreachable_endpoint_fails_fast(config_dir: Path, tmp_path: Path) -> None:
    cfg = storage.load_storage_config(config_dir, "azureKey", {"endpoint": f"http://127.0.0.1:{free_port()}/{ACCOUNT}"})
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot reach the Azure Blob endpoint"):
        storage.fetch(cfg, path="folder", dest=tmp_path / "m7", pvc_mounts=tmp_path)
    assert storage.predict_size(cfg, path="folder") == 0
    assert time.monotonic() - started < 5


def test_blobs_cannot_be_written_outside_the_model_folder(config_dir: Path, tmp_path: Path) -> None:
    # Azurite (like Azure) refuses `..` in blob names; the key rule itself is tested on
    # the shared download loop in test_storage_gcs. Here: a folder that leads out.
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "m8"
    dest.mkdir()
    (dest / "1").symlink_to(outside)
    cfg = storage.load_storage_config(config_dir, "azureString", {})
    with pytest.raises(InvalidArgument, match="leaves the model directory"):
        storage.fetch(cfg, path="folder", dest=dest, pvc_mounts=tmp_path)
    assert list(outside.iterdir()) == []
    assert not (dest / "config.pbtxt").exists()
