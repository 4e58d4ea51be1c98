"""The metrics port's certificate (`meshserve.puller.metrics_tls`): the pod's own when it has
one, else a self-signed one generated for the pod's names, whose key file is private (0600 in a
0700 folder), gone once the `with` ends, and never logged."""

from __future__ import annotations

import ipaddress
import logging
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshserve.common.settings import TLSSettings
from meshserve.puller.metrics_tls import certificate_names, metrics_tls, self_signed_pem
from meshserve.puller.settings import PullerSettings


def test_a_generated_certificate_is_self_signed_for_the_names_and_matches_its_key() -> None:
    cert_pem, key_pem, fingerprint = self_signed_pem(["pod-7", "10.1.2.3", "localhost", "pod-7"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # raises unless it signed itself
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["pod-7", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert fingerprint.count(":") == 31
    with pytest.raises(ValueError, match="at least one name"):
        self_signed_pem([])


def test_the_names_are_the_pods_and_loopback() -> None:
    settings = PullerSettings(pod_id="rt-abc-1", advertise_address="10.0.0.9:8085")
    names = certificate_names(settings)
    assert names[0] == "rt-abc-1" and {"10.0.0.9", "localhost", "127.0.0.1", "::1"} <= set(names)
    assert len(names) == len(set(names))


def test_without_a_certificate_one_is_generated_in_a_private_folder_that_goes_afterwards(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = PullerSettings(pod_id="pod-1", metrics_port=2112, metrics_scheme="https")
    with caplog.at_level(logging.INFO, logger="meshserve.common.metrics_tls"), metrics_tls(settings) as tls:
        cert, key = Path(tls["certfile"]), Path(tls["keyfile"])
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
        key_text = key.read_text()
        assert "PRIVATE KEY" in key_text
        assert x509.load_pem_x509_certificate(cert.read_bytes()).subject.rfc4514_string() == "CN=pod-1"
    assert not key.exists() and not key.parent.exists()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "self-signed certificate generated at start-up" in logged
    body = "".join(key_text.splitlines()[1:-1])
    assert body[:40] not in logged and "PRIVATE KEY" not in logged


def test_the_pods_certificate_is_used_as_given_and_http_takes_none(tmp_path: Path) -> None:
    tls = TLSSettings(cert_file=tmp_path / "pod.crt", key_file=tmp_path / "pod.key")
    with metrics_tls(PullerSettings(metrics_port=2112, metrics_scheme="https", tls=tls)) as args:
        assert args == {"certfile": str(tmp_path / "pod.crt"), "keyfile": str(tmp_path / "pod.key")}
    with metrics_tls(PullerSettings(metrics_port=2112, metrics_scheme="http")) as args:
        assert args == {}
