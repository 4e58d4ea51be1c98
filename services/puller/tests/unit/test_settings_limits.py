"""Puller settings of issue 17's per-model controls: the per-copy concurrency limit (also under
upstream's adapter env name) and HTTPS metrics, which need the pod's certificate."""

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


def test_https_metrics_need_the_pods_certificate(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="metrics_scheme https needs the pod's certificate"):
        PullerSettings(metrics_scheme="https", metrics_port=2112)
    with pytest.raises(ValidationError):
        PullerSettings(metrics_scheme="ftp")  # type: ignore[arg-type]
    PullerSettings(metrics_scheme="https", metrics_port=0)  # no metrics port: nothing to serve
    tls = TLSSettings(cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem")
    assert PullerSettings(metrics_scheme="https", metrics_port=2112, tls=tls).metrics_scheme == "https"
