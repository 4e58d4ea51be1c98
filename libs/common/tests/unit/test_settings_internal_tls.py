"""The one internal TLS setting (`MESHSERVE_INTERNAL_TLS__*`): it fills what an internal endpoint
leaves unset, an endpoint's own variables win, public endpoints never take it, unset = plaintext."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from meshserve.common.settings import INTERNAL, InternalTLS, ServiceSettings, TLSSettings

MESH = {
    "MESHSERVE_INTERNAL_TLS__CERT_FILE": "/mesh/tls.crt",
    "MESHSERVE_INTERNAL_TLS__KEY_FILE": "/mesh/tls.key",
    "MESHSERVE_INTERNAL_TLS__CA_FILE": "/mesh/ca.crt",
}
MESH_TLS = TLSSettings(cert_file=Path("/mesh/tls.crt"), key_file=Path("/mesh/tls.key"), ca_file=Path("/mesh/ca.crt"))


class _Demo(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_DEMO_")

    tls: InternalTLS = TLSSettings()
    """The demo's internal server."""
    peer_tls: InternalTLS = TLSSettings()
    """The demo's calls to a peer."""
    public_tls: TLSSettings = TLSSettings()
    """A public door: never internal."""


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("MESHSERVE_INTERNAL_TLS", "MESHSERVE_DEMO_", "MESHSERVE_SCHEDULER_", "MESHSERVE_ROUTER_",
                            "MESHSERVE_PULLER_", "MESHSERVE_CONTROLLER_")):
            monkeypatch.delenv(name)


def _mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MESH.items():
        monkeypatch.setenv(name, value)


def test_unset_everywhere_is_plaintext() -> None:
    s = _Demo()
    assert not (s.internal_tls.enabled or s.tls.enabled or s.peer_tls.enabled or s.public_tls.enabled)


def test_unset_internal_endpoints_inherit_the_one_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    _mesh(monkeypatch)
    s = _Demo()
    assert s.internal_tls == MESH_TLS
    assert s.tls == MESH_TLS and s.peer_tls == MESH_TLS
    assert s.public_tls == TLSSettings()  # public doors keep their own setting


def test_an_endpoints_own_files_win(monkeypatch: pytest.MonkeyPatch) -> None:
    _mesh(monkeypatch)
    monkeypatch.setenv("MESHSERVE_DEMO_TLS__CERT_FILE", "/own/server.crt")
    monkeypatch.setenv("MESHSERVE_DEMO_TLS__KEY_FILE", "/own/server.key")
    monkeypatch.setenv("MESHSERVE_DEMO_PEER_TLS__CA_FILE", "/own/peer-ca.crt")
    monkeypatch.setenv("MESHSERVE_DEMO_PEER_TLS__SERVER_NAME", "peer.internal")
    s = _Demo()
    # its own certificate and key, the mesh's CA
    assert s.tls == TLSSettings(cert_file=Path("/own/server.crt"), key_file=Path("/own/server.key"), ca_file=Path("/mesh/ca.crt"))
    # its own CA and server name, the mesh's certificate and key (as a pair)
    assert s.peer_tls == TLSSettings(
        cert_file=Path("/mesh/tls.crt"), key_file=Path("/mesh/tls.key"), ca_file=Path("/own/peer-ca.crt"), server_name="peer.internal"
    )


def test_direct_construction_inherits_too() -> None:
    s = _Demo(internal_tls=MESH_TLS, peer_tls=TLSSettings(ca_file=Path("/own/ca.crt")))
    assert s.tls == MESH_TLS
    assert s.peer_tls.ca_file == Path("/own/ca.crt") and s.peer_tls.cert_file == MESH_TLS.cert_file


def test_the_one_setting_needs_a_certificate_and_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSERVE_INTERNAL_TLS__CA_FILE", "/mesh/ca.crt")
    with pytest.raises(ValidationError, match="MESHSERVE_INTERNAL_TLS__CERT_FILE and MESHSERVE_INTERNAL_TLS__KEY_FILE are required"):
        _Demo()
    monkeypatch.setenv("MESHSERVE_INTERNAL_TLS__CERT_FILE", "/mesh/tls.crt")
    with pytest.raises(ValidationError, match="cert_file is set without key_file"):
        _Demo()


def test_a_certificate_without_its_key_is_refused_anywhere() -> None:
    with pytest.raises(ValidationError, match="key_file is set without cert_file"):
        TLSSettings(key_file=Path("/k"))


def test_every_field_is_documented() -> None:
    for name, field in {**TLSSettings.model_fields, **ServiceSettings.model_fields}.items():
        assert field.description, name
    assert "MESHSERVE_INTERNAL_TLS" in str(ServiceSettings.model_fields["internal_tls"].validation_alias)


def _internal_fields(cls: type[ServiceSettings]) -> set[str]:
    return {name for name, field in cls.model_fields.items() if any(m is INTERNAL for m in field.metadata)}


def test_the_services_mark_exactly_their_internal_hops(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshserve.controller.settings import ControllerSettings
    from meshserve.puller.settings import PullerSettings
    from meshserve.router.settings import RouterSettings
    from meshserve.scheduler.settings import SchedulerSettings

    assert _internal_fields(SchedulerSettings) == {"tls", "puller_tls"}
    assert _internal_fields(PullerSettings) == {"tls", "scheduler_tls"}
    assert _internal_fields(RouterSettings) == {"scheduler_tls"}  # not the front doors, not the model servers
    assert _internal_fields(ControllerSettings) == {"scheduler_tls"}
    _mesh(monkeypatch)
    router = RouterSettings()
    assert router.scheduler_tls == MESH_TLS
    assert router.tls == TLSSettings() and router.model_server_tls == TLSSettings()
    scheduler = SchedulerSettings()
    assert scheduler.tls == MESH_TLS and scheduler.puller_tls == MESH_TLS
    puller = PullerSettings()
    assert puller.tls == MESH_TLS and puller.scheduler_tls == MESH_TLS
    assert ControllerSettings().scheduler_tls == MESH_TLS


def test_a_services_own_checks_see_the_inherited_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The base class fills the internal fields before a service's validators run: a puller
    serving https metrics with the pod's certificate finds the one setting's."""
    from meshserve.puller.settings import PullerSettings

    _mesh(monkeypatch)
    monkeypatch.setenv("MESHSERVE_PULLER_METRICS_PORT", "2112")
    monkeypatch.setenv("MESHSERVE_PULLER_METRICS_SCHEME", "https")
    assert PullerSettings().tls.cert_file == MESH_TLS.cert_file
