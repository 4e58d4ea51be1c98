"""The storage-config Secret in local mode: the carrier ConfigMap and the key files
(`meshserve.controller.local`); the whole flow over the stack is
tests/integration/test_storage_local_secret.py."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.controller import local


def b64(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


S3 = {"type": "s3", "bucket": "b", "secret_access_key": "very-secret-value-123"}


def test_a_secret_travels_as_a_carrier_and_string_data_wins() -> None:
    secret = {"kind": "Secret", "metadata": {"name": "storage-config"},
              "data": {"a": b64({"type": "s3"}), "b": b64({"type": "gcs"})}, "stringData": {"b": json.dumps(S3)}}
    carrier = local.secret_carrier(secret, namespace="default")
    assert carrier["kind"] == "ConfigMap" and carrier["metadata"]["name"] == "local-secret.storage-config"
    assert "very-secret-value-123" not in json.dumps(carrier)   # base64, as a Secret's data
    name, data = local.carried_secret(carrier) or ("", {})
    assert name == "storage-config" and json.loads(base64.b64decode(data["b"])) == S3
    assert local.carried_secret({"kind": "ConfigMap", "metadata": {"name": "model-serving-config"}}) is None
    forged = {**carrier, "metadata": {**carrier["metadata"], "name": "something-else"}}
    assert local.carried_secret(forged) is None


def test_files_are_written_private_and_only_managed_keys_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "storage-config"
    folder.mkdir()
    (folder / "localMinIO").write_text('{"type": "s3"}')   # the local stack's own key
    files = local.StorageConfigFiles(folder)
    assert files.sync({"one": b64(S3), "two": b64({"type": "pvc", "name": "c"})}) == ["one", "two"]
    assert json.loads((folder / "one").read_text()) == S3
    assert (folder / "one").stat().st_mode & 0o777 == 0o600 and folder.stat().st_mode & 0o777 == 0o700
    inode = (folder / "two").stat().st_ino
    assert files.sync({"two": b64({"type": "pvc", "name": "c"})}) == []   # unchanged: not rewritten
    assert (folder / "two").stat().st_ino == inode
    assert not (folder / "one").exists() and (folder / "localMinIO").exists()
    files.sync(None)   # the Secret deleted
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["localMinIO"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("key", ["../escape", "a/b", ".", "..", "with space"])
def test_a_key_that_is_not_a_file_name_is_skipped_and_named(tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture) -> None:
    files = local.StorageConfigFiles(tmp_path / "d")
    with caplog.at_level(logging.WARNING):
        assert files.sync({key: b64(S3), "ok": b64(S3)}) == ["ok"]
    assert repr(key) in caplog.text and "very-secret-value-123" not in caplog.text
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")) == ["ok"]


def test_a_value_that_is_not_base64_is_skipped_without_quoting_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = local.StorageConfigFiles(tmp_path / "d")
    with caplog.at_level(logging.WARNING):
        assert files.sync({"bad": "very-secret-value-123!!"}) == []
    assert "bad" in caplog.text and "very-secret-value-123" not in caplog.text


any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(data=any_json, string_data=any_json, kind=st.sampled_from([None, "Opaque", "kubernetes.io/tls", 5]))
def test_meshserve_apply_checks_any_secret_body_without_crashing(data: object, string_data: object, kind: object) -> None:
    from meshserve.cli import resources

    body: dict[str, object] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "storage-config"}}
    for field, value in (("data", data), ("stringData", string_data), ("type", kind)):
        if value is not None:
            body[field] = value
    errors = resources.validate(resources.Document("f.yaml", 1, body))
    assert all(isinstance(e, str) and e for e in errors)
    if not errors:  # what passes becomes a carrier the store takes, and its files
        carrier = local.secret_carrier(body, namespace="default")
        assert local.carried_secret(carrier) is not None
