"""Puller settings of issue 17's per-model controls: the per-copy concurrency limit (also under
upstream's adapter env name) and HTTPS metrics (the pod's certificate, or one generated at start)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from meshserve.common.settings import TLSSettings
from meshserve.puller.settings import PullerSettings


def test_the_limit_reads_our_env_and_upstreams(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PullerSettings().limit_per_model_concurrency == 0
    monkeypatch.setenv("LIMIT_PER_MODEL_CONCURRENCY", "3")
    assert PullerSettings().limit_per_model_concurrency == 3
    monkeypatch.setenv("MESHSERVE_PULLER_LIMIT_PER_MODEL_CONCURRENCY", "5")
    assert PullerSettings().limit_per_model_concurrency == 5
    monkeypatch.setenv("MESHSERVE_PULLER_LIMIT_PER_MODEL_CONCURRENCY", "-1")
    with pytest.raises(ValidationError):
        PullerSettings()


def test_https_metrics_take_the_pods_certificate_or_none_and_refuse_half_of_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a certificate the puller generates one at start (`metrics_tls`); a certificate
    without its key is refused, naming what is missing; only http and https are schemes."""
    assert PullerSettings(metrics_scheme="https", metrics_port=2112).tls.cert_file is None
    with pytest.raises(ValidationError):
        PullerSettings(metrics_scheme="ftp")  # type: ignore[arg-type]
    tls = TLSSettings(cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem")
    assert PullerSettings(metrics_scheme="https", metrics_port=2112, tls=tls).tls.key_file == tmp_path / "k.pem"
    monkeypatch.setenv("MESHSERVE_PULLER_METRICS_SCHEME", "https")
    monkeypatch.setenv("MESHSERVE_PULLER_TLS__CERT_FILE", str(tmp_path / "c.pem"))
    with pytest.raises(ValidationError, match="cert_file is set without key_file"):
        PullerSettings()
