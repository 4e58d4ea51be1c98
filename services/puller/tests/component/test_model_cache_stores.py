"""The node's model cache with GCS (gcp-storage-emulator) and Azure Blob (Azurite): the
same loop as S3 (`sync_objects`), so a reload is a hard link; the store's checksum (GCS
md5, Azure Content-MD5) is part of the entry's name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup
from meshserve.puller import storage, storage_azure, storage_gcs
from meshserve.puller.model_cache import ModelCache

BODY = b"m" * 4096
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="module")
def gcs_fields(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("gcs-logs"))
    try:
        url = infra.start_gcs(group)
        client = gcs.Client(project="t", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})  # type: ignore[no-untyped-call]
        client.create_bucket("cache-bucket").blob("m/model.bin").upload_from_string(BODY)
        yield {"type": "gcs", "bucket": "cache-bucket", "endpoint": url}
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def azure_fields(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("azurite-logs"))
    try:
        endpoint = infra.start_azurite(group)
        conn = f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={endpoint};"
        BlobServiceClient.from_connection_string(conn).create_container("cache").upload_blob("m/model.bin", BODY)
        yield {"type": "azure", "connection_string": conn, "container": "cache"}
    finally:
        group.stop_all()


def _round_trip(fields: dict[str, str], tmp_path: Path) -> ModelCache:
    cfg = storage.StorageConfig(type=fields["type"], fields=dict(fields), key="cacheTest")
    cache = ModelCache(root=tmp_path / "cache", max_bytes=1 << 20)
    for model in ("a", "b"):
        dest = tmp_path / "models" / model
        assert storage.fetch(cfg, path="m/model.bin", dest=dest, pvc_mounts=tmp_path, cache=cache) == len(BODY)
        assert (dest / "model.bin").read_bytes() == BODY
    assert (cache.counters.downloads, cache.counters.hits) == (1, 1)
    assert (tmp_path / "models" / "a" / "model.bin").stat().st_ino == (tmp_path / "models" / "b" / "model.bin").stat().st_ino
    return cache


def test_gcs_reload_is_a_hard_link(gcs_fields: dict[str, str], tmp_path: Path) -> None:
    _round_trip(gcs_fields, tmp_path)
    client, bucket = storage_gcs._client(gcs_fields)
    (obj,) = storage_gcs._objects(client, bucket, "m/model.bin")
    assert obj.checksum.startswith("md5:") and len(obj.checksum) == 4 + 32


def test_azure_reload_is_a_hard_link(azure_fields: dict[str, str], tmp_path: Path) -> None:
    _round_trip(azure_fields, tmp_path)
    container, _ = storage_azure._container(azure_fields, "m/model.bin")
    (obj,) = storage_azure._objects(container, "m/model.bin")
    assert obj.checksum.startswith("md5:") and len(obj.checksum) == 4 + 32
