"""ServiceSettings: the common fields reach every service under its own prefix, documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

from meshserve.common.settings import ServiceSettings, TLSSettings


class _Demo(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_DEMO_")

    port: int = 1
    """The demo port."""


def test_common_fields_use_the_services_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSERVE_DEMO_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("MESHSERVE_DEMO_LOG_JSON", "true")
    monkeypatch.setenv("MESHSERVE_DEMO_METRICS_PORT", "0")
    monkeypatch.setenv("MESHSERVE_DEMO_TLS__CERT_FILE", "/tls/cert.pem")
    monkeypatch.setenv("MESHSERVE_DEMO_TLS__KEY_FILE", "/tls/key.pem")
    monkeypatch.setenv("MESHSERVE_DEMO_PORT", "7")
    s = _Demo()
    assert (s.log_level, s.log_json, s.metrics_port, s.port) == ("DEBUG", True, 0, 7)
    assert s.tls == TLSSettings(cert_file=Path("/tls/cert.pem"), key_file=Path("/tls/key.pem"))
    assert s.tls.enabled


def test_every_common_field_has_a_description() -> None:
    for model in (_Demo, TLSSettings):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
    assert _Demo.model_fields["port"].description == "The demo port."


def test_settings_built_directly_ignore_the_environment_prefix_of_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSERVE_OTHER_METRICS_PORT", "9")
    assert _Demo(metrics_port=5).metrics_port == 5
    assert _Demo().metrics_port == 2112
