"""grpcutil's TLS on a real grpc.aio server: with a CA the server requires a client certificate
signed by it (mutual TLS); plaintext, certificate-less and foreign-CA clients never get an answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshserve.cli.devstack import write_internal_tls
from meshserve.common.grpcutil import bind, open_channel
from meshserve.common.settings import TLSSettings


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


def _tls(d: Path, name: str, **extra: object) -> TLSSettings:
    return TLSSettings(cert_file=d / f"{name}.crt", key_file=d / f"{name}.key", ca_file=d / "ca.crt", **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    mesh, other = tmp_path_factory.mktemp("mesh"), tmp_path_factory.mktemp("other")
    write_internal_tls(mesh, ("server", "client"))
    write_internal_tls(other, ("client",))
    return mesh, other


@pytest.fixture
async def address(pki: tuple[Path, Path]) -> AsyncIterator[str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),))
    port = bind(server, "127.0.0.1:0", _tls(pki[0], "server"))
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def _call(channel: grpc.aio.Channel) -> bytes:
    async with channel:
        return await channel.unary_unary("/t.T/Echo")(b"hi", timeout=5)  # type: ignore[no-any-return]


async def _refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(channel)
    return err.value.code()


async def test_a_client_with_a_certificate_of_the_mesh_ca_is_answered(address: str, pki: tuple[Path, Path]) -> None:
    assert await _call(open_channel(address, tls=_tls(pki[0], "client"))) == b"hi"


async def test_plaintext_certificate_less_and_foreign_clients_are_refused(address: str, pki: tuple[Path, Path]) -> None:
    mesh, other = pki
    assert await _refused(open_channel(address)) is grpc.StatusCode.UNAVAILABLE
    assert await _refused(open_channel(address, tls=TLSSettings(ca_file=mesh / "ca.crt"))) is grpc.StatusCode.UNAVAILABLE
    foreign = TLSSettings(cert_file=other / "client.crt", key_file=other / "client.key", ca_file=mesh / "ca.crt")
    assert await _refused(open_channel(address, tls=foreign)) is grpc.StatusCode.UNAVAILABLE


async def test_a_client_verifies_the_server_against_its_ca_and_the_server_name(address: str, pki: tuple[Path, Path]) -> None:
    mesh, other = pki
    wrong_ca = TLSSettings(cert_file=mesh / "client.crt", key_file=mesh / "client.key", ca_file=other / "ca.crt")
    assert await _refused(open_channel(address, tls=wrong_ca)) is grpc.StatusCode.UNAVAILABLE
    assert await _refused(open_channel(address, tls=_tls(mesh, "client", server_name="not-the-server.internal"))) is grpc.StatusCode.UNAVAILABLE
    assert await _call(open_channel(address, tls=_tls(mesh, "client", server_name="localhost"))) == b"hi"


def test_write_internal_tls_keeps_the_keys_private(pki: tuple[Path, Path]) -> None:
    mesh = pki[0]
    assert mesh.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in mesh.iterdir()) == ["ca.crt", "client.crt", "client.key", "server.crt", "server.key"]  # no CA key
    for key in mesh.glob("*.key"):
        assert key.stat().st_mode & 0o777 == 0o600


async def test_a_server_with_a_ca_but_no_certificate_is_refused_not_served_in_plaintext(pki: tuple[Path, Path]) -> None:
    # async: grpc.aio.server() needs a running loop (a sync test found none once an earlier
    # test had closed the default one)
    server = grpc.aio.server()
    with pytest.raises(ValueError, match="has ca_file but no cert_file"):
        bind(server, "127.0.0.1:0", TLSSettings(ca_file=pki[0] / "ca.crt"))


async def test_an_unreadable_tls_file_is_named(tmp_path: Path) -> None:
    server = grpc.aio.server()
    missing = TLSSettings(cert_file=tmp_path / "nope.crt", key_file=tmp_path / "nope.key")
    with pytest.raises(ValueError, match=r"TLS file .*nope\.key cannot be read"):
        bind(server, "127.0.0.1:0", missing)
