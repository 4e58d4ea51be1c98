"""The puller's storage layer against a real S3 endpoint (moto server process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup
from meshserve.common.errors import FailedPrecondition, InvalidArgument
from meshserve.puller import storage

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


def test_storage_config_rules_follow_the_modelmesh_puller(config_dir: Path) -> None:
    with pytest.raises(FailedPrecondition, match="Did not find storage config for key nope: Storage secretKey not found: nope"):
        storage.load_storage_config(config_dir, "nope", {})
    with pytest.raises(FailedPrecondition, match="Did not find storage config"):
        storage.load_storage_config(config_dir, "../etc/passwd", {})
    (config_dir / "default").unlink()
    with pytest.raises(FailedPrecondition, match="Predictor Storage field missing"):
        storage.load_storage_config(config_dir, None, {})
