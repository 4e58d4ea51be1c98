from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserve.common.errors import InvalidArgument
from meshserve.common.storage import check_model_id, parse_storage_uri, safe_join


@pytest.mark.parametrize(
    ("uri", "type_", "path", "params"),
    [
        ("s3://bucket/sklearn/mnist-svm.joblib", "s3", "sklearn/mnist-svm.joblib", {"bucket": "bucket"}),
        ("gs://b/p/q", "gcs", "p/q", {"bucket": "b"}),
        ("pvc://models-pvc-1/sklearn/m.joblib", "pvc", "sklearn/m.joblib", {"name": "models-pvc-1"}),
        (
            "https://acct.blob.core.windows.net/container/dir/model.onnx",
            "azure",
            "dir/model.onnx",
            {"account_name": "acct", "container": "container"},
        ),
        (
            "https://github.com/kserve/x/blob/main/m.joblib?raw=true",
            "http",
            "kserve/x/blob/main/m.joblib",
            {"url": "https://github.com?raw=true"},
        ),
        ("file:///tmp/models/m.joblib", "file", "/tmp/models/m.joblib", {}),
    ],
)
def test_parse_storage_uri_follows_modelmesh(uri: str, type_: str, path: str, params: dict[str, str]) -> None:
    loc = parse_storage_uri(uri)
    assert (loc.type, loc.path) == (type_, path)
    for key, value in params.items():
        assert loc.params[key] == value
    assert loc.params["type"] == type_


def test_uri_parameters_override_given_ones() -> None:
    loc = parse_storage_uri("s3://real/p", {"bucket": "other", "region": "eu"})
    assert loc.params == {"bucket": "real", "region": "eu", "type": "s3"}


@pytest.mark.parametrize("uri", ["", "ftp://h/p", "s3:///p", "s3://bucket", "s3://bucket/", "pvc://name", "no-scheme"])
def test_bad_uris_are_rejected_with_a_message(uri: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_storage_uri(uri)
    assert err.value.message


def test_safe_join_keeps_paths_inside(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a/b.joblib") == tmp_path.resolve() / "a" / "b.joblib"
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(InvalidArgument):
            safe_join(tmp_path, bad)


def test_safe_join_refuses_symlinks_out(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "link").symlink_to("/etc")
    with pytest.raises(InvalidArgument):
        safe_join(base, "link/passwd")


@given(st.text(min_size=1, max_size=40))
def test_safe_join_never_escapes(relative: str) -> None:
    base = Path("/tmp/meshserve-safe-join-base")
    try:
        joined = safe_join(base, relative)
    except InvalidArgument:
        return
    resolved = joined.resolve()
    assert resolved == base.resolve() or base.resolve() in resolved.parents


@pytest.mark.parametrize("bad", ["", ".", "..", ".hidden", "a/b", "a b", "x" * 254, "é"])
def test_check_model_id_rejects_unsafe_ids(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_model_id(bad)


def test_check_model_id_accepts_modelmesh_ids() -> None:
    assert check_model_id("example-sklearn-isvc__isvc-3642375d03") == "example-sklearn-isvc__isvc-3642375d03"
