from __future__ import annotations

import base64
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.controller.storage_config import parse_storage_secret

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
LOCAL_MINIO = {"type": "s3", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": SECRET,
               "endpoint_url": "http://minio:9000", "bucket": "modelmesh-example-models", "region": "us-south"}


def b64(obj: object) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def test_parses_one_json_per_key() -> None:
    cfg = parse_storage_secret({"localMinIO": b64(LOCAL_MINIO), "pvc1": b64({"type": "pvc", "name": "models-pvc-1"})})
    entry = cfg.get("localMinIO")
    assert entry is not None and entry.type == "s3"
    assert entry.public["bucket"] == "modelmesh-example-models"
    assert entry.credentials()["secret_access_key"] == SECRET
    assert cfg.pvc_names() == ("models-pvc-1",)
    assert cfg.errors == {}


def test_default_bucket_alias_only_when_bucket_absent() -> None:
    cfg = parse_storage_secret({"a": json.dumps({"type": "s3", "default_bucket": "old"}),
                                "b": json.dumps({"type": "s3", "default_bucket": "old", "bucket": "new"})},
                               base64_encoded=False)
    assert cfg.entries["a"].public["bucket"] == "old"
    assert cfg.entries["b"].public["bucket"] == "new"
    assert "default_bucket" not in cfg.entries["a"].credentials()


@pytest.mark.parametrize("value", ["not json", b64([1, 2]), b64({"bucket": "x"}), "!!!notbase64"])
def test_bad_values_are_reported_by_key_without_content(value: str) -> None:
    cfg = parse_storage_secret({"k": value})
    assert "k" in cfg.errors and "k" not in cfg.entries
    assert value not in cfg.errors["k"]


def test_credentials_never_appear_in_repr_str_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_storage_secret({"localMinIO": b64(LOCAL_MINIO)})
    entry = cfg.entries["localMinIO"]
    for text in (repr(entry), str(entry), entry.describe(), repr(cfg)):
        assert SECRET not in text and "AKIAIOSFODNN7EXAMPLE" not in text
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("loaded %s", entry)
    assert SECRET not in caplog.text


# --- fuzz: mutated Secret values never crash the parser nor leak a value -------------------------

FUZZ_SECRET = "fuzz-controller-secret-0001"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20).filter(lambda t: FUZZ_SECRET not in t),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def secret_values(draw: st.DrawFn) -> str | bytes:
    entry = {"type": draw(st.sampled_from(["s3", "gcs", "azure", "http", "pvc", ""]) | json_values),
             "secret_access_key": FUZZ_SECRET, "bucket": draw(json_values)}
    for key in draw(st.lists(st.sampled_from(["type", "bucket", "secret_access_key", "default_bucket", "name"]), max_size=2)):
        entry.pop(key, None)
    text = draw(st.sampled_from([json.dumps(entry), json.dumps([entry]), json.dumps(entry)[:-1], f"{FUZZ_SECRET} not json"]))
    kind = draw(st.sampled_from(["b64", "plain", "bytes", "broken-b64"]))
    if kind == "b64":
        return base64.b64encode(text.encode()).decode()
    if kind == "bytes":
        return base64.b64encode(text.encode())
    if kind == "broken-b64":
        return base64.b64encode(text.encode()).decode()[:-1] + "!"
    return text


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(st.text(min_size=1, max_size=10), secret_values(), max_size=4))
def test_the_secret_parser_never_crashes_and_never_shows_a_value(data: dict[str, str | bytes]) -> None:
    cfg = parse_storage_secret(data)
    assert set(cfg.entries) | set(cfg.errors) == set(data) and not set(cfg.entries) & set(cfg.errors)
    shown = [repr(cfg), *cfg.errors.values(), *(e.describe() for e in cfg.entries.values())]
    assert not any(FUZZ_SECRET in text for text in shown)
    for entry in cfg.entries.values():
        assert entry.type and "secret_access_key" not in entry.public
