"""What the gRPC door refuses or shortens before it answers (found by tests/fuzz): names no
model can have, status messages too long for a gRPC client, a version the copy does not have."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.common.errors import InvalidArgument, NotFound
from meshserve.router.dataplane import MAX_NAME_CHARS, DataPlane
from meshserve.router.server import MAX_DETAILS_BYTES, bounded
from meshserve.router.settings import RouterSettings
from meshserve.router.table import RoutingTable
from meshserve.router.upstream import copy_gone, raise_rest_error
from meshserve.router.upstream_errors import CopyGone


def _plane() -> DataPlane:
    # resolve() reads only the table: no scheduler is called
    return DataPlane(settings=RouterSettings(), table=RoutingTable(fallback_seconds=30), scheduler=None)  # type: ignore[arg-type]


def test_a_name_longer_than_any_model_id_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidArgument) as err:
        _plane().resolve("x" * 10_240, ())
    assert "10240 characters long" in err.value.message and len(err.value.message) < 200


def test_a_long_routing_header_is_refused_too() -> None:
    with pytest.raises(InvalidArgument):
        _plane().resolve("short", (("mm-vmodel-id", "v" * (MAX_NAME_CHARS + 1)),))


def test_names_up_to_the_limit_resolve() -> None:
    name = "m" * MAX_NAME_CHARS
    assert _plane().resolve(name, ()) == name
    assert _plane().resolve("ignored", (("mm-model-id", name),)) == name


@settings(max_examples=200, deadline=None)
@given(message=st.text(max_size=3000))
def test_bounded_messages_fit_a_grpc_header(message: str) -> None:
    out = bounded(message)
    assert len(out.encode()) <= MAX_DETAILS_BYTES
    if len(message.encode()) <= MAX_DETAILS_BYTES:
        assert out == message
    else:
        assert out.endswith("...") and message.startswith(out[:-3])


def test_a_missing_version_is_not_a_vanished_copy() -> None:
    assert not copy_gone(grpc.StatusCode.NOT_FOUND, "Model fuzz-iris with version 1 not found")
    assert copy_gone(grpc.StatusCode.NOT_FOUND, "Model fuzz-iris not found")
    assert copy_gone(grpc.StatusCode.NOT_FOUND, "Model fuzz-iris with version  not found")  # MLServer: not held
    assert copy_gone(grpc.StatusCode.UNAVAILABLE, "connection refused")


def test_rest_404s_tell_a_missing_version_from_a_copy_that_is_not_there() -> None:
    with pytest.raises(NotFound):
        raise_rest_error(404, b'{"error": "Model m with version 2 not found"}', infer=True)
    with pytest.raises(CopyGone):
        raise_rest_error(404, b'{"error": "Model m with version  not found"}', infer=True)
    with pytest.raises(CopyGone):
        raise_rest_error(404, b'{"error": "Model m not found"}', infer=True)

