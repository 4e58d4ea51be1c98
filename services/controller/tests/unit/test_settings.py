"""ControllerSettings: on the common base (its fields under MESHSERVE_CONTROLLER_), every
field documented, local-mode defaults."""

from __future__ import annotations

import pytest

from meshserve.common.settings import ServiceSettings
from meshserve.controller.settings import ControllerSettings, Mode, RuntimeProvider


def test_common_fields_come_with_the_controllers_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSERVE_CONTROLLER_LOG_JSON", "1")
    monkeypatch.setenv("MESHSERVE_CONTROLLER_METRICS_PORT", "0")
    monkeypatch.setenv("MESHSERVE_SCHEDULER_ADDRESS", "sched:8034")
    s = ControllerSettings()
    assert isinstance(s, ServiceSettings)
    assert (s.log_json, s.metrics_port, s.scheduler_address, s.health_port) == (True, 0, "sched:8034", 8081)


def test_every_field_is_documented() -> None:
    missing = [name for name, field in ControllerSettings.model_fields.items() if not field.description]
    assert missing == []


def test_local_mode_defaults() -> None:
    s = ControllerSettings(mode=Mode.LOCAL).effective()
    assert (s.namespace, s.runtime_provider, s.resync_seconds) == ("default", RuntimeProvider.PROCESS, 30.0)
    kept = ControllerSettings(mode=Mode.LOCAL, namespace="ns", runtime_provider=RuntimeProvider.STATIC).effective()
    assert (kept.namespace, kept.runtime_provider) == ("ns", RuntimeProvider.STATIC)
    assert ControllerSettings().effective().namespace == "modelmesh-serving"


def test_namespace_scope_by_default_and_cluster_scope_by_ours_or_upstreams_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = ControllerSettings()
    assert s.namespace_scope is True and s.router_image and s.router_replicas == 2
    monkeypatch.setenv("NAMESPACE_SCOPE", "false")          # upstream's controller env
    assert ControllerSettings().namespace_scope is False
    monkeypatch.setenv("MESHSERVE_CONTROLLER_NAMESPACE_SCOPE", "true")   # ours wins
    assert ControllerSettings().namespace_scope is True
