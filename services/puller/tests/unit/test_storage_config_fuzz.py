"""Hypothesis fuzzing of the storage-config parsing: a key file holding mutated JSON (fields
dropped, retyped, replaced by arbitrary text, unknown fields added, the type changed, the
text cut short or not an object) is read with `load_storage_config` and checked with
`check_config` (what `fetch` does before its first request: the SDK client is built, nothing
is sent). It must never crash: the only errors are FailedPrecondition / InvalidArgument, their
message names the storage key (or is upstream's fixed "Predictor Storage field missing") and a
field, and neither the message nor any log line quotes a credential value.

Plus the Bad input cases of issue 18 that no other test covers: object keys that are absolute
or leave the model folder, in every position, refuse the fetch before any download.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshserve.common.errors import FailedPrecondition, InvalidArgument
from meshserve.puller import storage
from meshserve.puller.storage_sync import RemoteObject, sync_objects

KEY = "fuzzKey"
SECRETS = {
    "secret_access_key": "fuzz-S3-secret-value-0001",
    "access_key_id": "AKIAFUZZACCESSKEY0001",
    "private_key": "-----BEGIN PRIVATE KEY-----\nZnV6ei1nY3MtcHJpdmF0ZS1rZXktMDAx\n-----END PRIVATE KEY-----",
    "account_key": base64.b64encode(b"fuzz-azure-account-key-0001").decode(),
    "client_secret": "fuzz-azure-client-secret-0001",
    "connection_string": "AccountName=acct;AccountKey=ZnV6ei1jb25uLXN0cmluZy1rZXk=;BlobEndpoint=http://127.0.0.1:9/acct",
    "client_key": "-----BEGIN PRIVATE KEY-----\nZnV6ei1odHRwLWNsaWVudC1rZXktMDAx\n-----END PRIVATE KEY-----",
}
HEADER_TOKEN = "fuzz-http-bearer-token-0001"
NEEDLES = [*SECRETS.values(), HEADER_TOKEN, "ZnV6ei1jb25uLXN0cmluZy1rZXk=", "ZnV6ei1nY3MtcHJpdmF0ZS1rZXktMDAx"]
"""Credential values (and the parts of them a message might quote) that must never be shown."""

BASES: dict[str, dict[str, Any]] = {
    "s3": {"type": "s3", "access_key_id": SECRETS["access_key_id"], "secret_access_key": SECRETS["secret_access_key"],
           "endpoint_url": "http://127.0.0.1:9", "bucket": "b", "region": "us-south"},
    "gcs": {"type": "gcs", "private_key": SECRETS["private_key"], "client_email": "sa@p.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token", "bucket": "b"},
    "azure-key": {"type": "azure", "account_name": "acct", "account_key": SECRETS["account_key"], "container": "c",
                  "endpoint": "http://127.0.0.1:9/acct"},
    "azure-string": {"type": "azure", "connection_string": SECRETS["connection_string"], "container": "c"},
    "azure-sp": {"type": "azure", "account_name": "acct", "container": "c", "client_id": "cid", "tenant_id": "tid",
                 "client_secret": SECRETS["client_secret"]},
    "http": {"type": "http", "url": "https://example.invalid/models", "headers": {"Authorization": f"Bearer {HEADER_TOKEN}"},
             "client_key": SECRETS["client_key"], "client_certificate": "-----BEGIN CERTIFICATE-----\nbm8=\n-----END CERTIFICATE-----"},
    "pvc": {"type": "pvc", "name": "claim"},
}
FIELDS = sorted({f for base in BASES.values() for f in base} | {"default_bucket", "addressing_style", "certificate",
                                                                "authority_host", "project_id", "s3_force_path_style"})

# values a field may be given instead of its own (never a credential: a user who pastes a
# secret into `bucket` gets it quoted back, as any tool would)
odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=40).filter(lambda t: not any(n in t for n in NEEDLES)),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(["", " ", "..", "/", "../x", "http://", "https://h:99999", "http://h:port", "ftp://h", "-----BEGIN X-----",
                     "\\n", "\x00", "a" * 300]),
)


URL_FIELDS = {"url", "endpoint_url", "endpoint", "authority_host", "token_uri"}
odd_urls = st.one_of(
    st.sampled_from(["https://h:99999", "http://h:port", "http://[::1", "https://", "http:///x", "//h/x", "h:80",
                     "http://user:pw@h:1/x", "https://h:0", "https://h/%zz", "unix:///tmp/s", "HTTP://H"]),
    st.builds(lambda host, port: f"https://{host}:{port}", st.text(max_size=8), st.integers(-5, 100_000)),
)


@st.composite
def mutated_entries(draw: st.DrawFn) -> tuple[str, str]:
    """(the base's name, the key file's text)."""
    name = draw(st.sampled_from(sorted(BASES)))
    entry: dict[str, Any] = dict(BASES[name])
    own = sorted(entry)  # most mutations hit the fields this type reads
    fields = st.one_of(st.sampled_from(own), st.sampled_from(own), st.sampled_from(FIELDS))
    for field in draw(st.lists(fields, max_size=4, unique=True)):
        action = draw(st.sampled_from(["drop", "retype", "retype"]))
        if action == "drop":
            entry.pop(field, None)
        elif field in URL_FIELDS and draw(st.booleans()):
            entry[field] = draw(odd_urls)
        else:
            entry[field] = draw(odd_values)
    if draw(st.booleans()):
        entry["type"] = draw(st.one_of(st.sampled_from(["s3", "gcs", "azure", "http", "pvc", "file", "S3", "ftp", ""]), odd_values))
    text = json.dumps(entry)
    shape = draw(st.sampled_from(["object", "object", "object", "cut", "list", "scalar"]))
    if shape == "cut":
        text = text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    elif shape == "list":
        text = json.dumps([entry])
    elif shape == "scalar":
        text = json.dumps(draw(odd_values))
    return name, text


def _names_a_field(message: str) -> bool:
    return (
        any(f"'{f}'" in message for f in FIELDS)
        or "PVC " in message or "pvc://" in message         # the claim (the field `name`) is named by its value
        or "is not valid JSON" in message or "must be a JSON object" in message   # the whole key
        or "storage type" in message
    )


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mutated_entries(), path=st.sampled_from(["models/m", "", "../up", "/abs/m"]))
def test_a_mutated_storage_config_gives_a_clear_error_or_a_config(
    case: tuple[str, str], path: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an S3 key without access keys makes botocore look for instance credentials: not here
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _, text = case
    with tempfile.TemporaryDirectory() as tmp:
        config_dir = Path(tmp) / "storage-config"
        config_dir.mkdir()
        (config_dir / KEY).write_text(text)
        pvc_mounts = Path(tmp) / "pvc"
        (pvc_mounts / "claim" / "models").mkdir(parents=True)
        (pvc_mounts / "claim" / "models" / "m").write_text("model")
        caplog.clear()
        with caplog.at_level(logging.INFO):
            try:
                cfg = storage.load_storage_config(config_dir, KEY, {})
                assert not any(n in repr(cfg) for n in NEEDLES)
                storage.check_config(cfg, path=path, pvc_mounts=pvc_mounts)
            except (FailedPrecondition, InvalidArgument) as err:
                message = str(err.message)
                assert message == "Predictor Storage field missing" or KEY in message, message
                assert message == "Predictor Storage field missing" or _names_a_field(message), message
                assert not any(n in message for n in NEEDLES), message
        assert not any(n in caplog.text for n in NEEDLES), caplog.text


@pytest.mark.parametrize("key", [
    "m/../../escape", "m/../../../etc/passwd", "m/a/../../../x", "m//../../x", "m/./../../x", "m/\\..\\..\\x/../../..",
])
def test_object_keys_that_leave_the_model_folder_refuse_the_fetch_before_any_download(tmp_path: Path, key: str) -> None:
    calls: list[str] = []
    objects = [RemoteObject("m/ok", 1, "v"), RemoteObject(key, 1, "v")]
    with pytest.raises(InvalidArgument):
        sync_objects(objects, path="m", dest=tmp_path / "d", download=lambda obj, tmp: calls.append(obj.key), workers=4)
    assert calls == [] and not (tmp_path / "d").exists()
    assert not any(p.name in ("escape", "passwd", "x") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside", "a/../../outside"])
def test_a_model_path_that_is_absolute_or_leaves_the_claim_is_refused(tmp_path: Path, path: str) -> None:
    (tmp_path / "pvc" / "claim").mkdir(parents=True)
    (tmp_path / "outside").write_text("not a model")
    cfg = storage.StorageConfig(type="pvc", fields={"type": "pvc", "name": "claim"}, key="pvcKey")
    with pytest.raises(InvalidArgument, match="storage key 'pvcKey': model path"):
        storage.fetch(cfg, path=path, dest=tmp_path / "models" / "m", pvc_mounts=tmp_path / "pvc")
    assert not (tmp_path / "models" / "m").exists()
