"""routes: the hand-built `RouteUpdate` bytes are exactly protobuf's own serialisation."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.scheduler.routing.routes import (
    EndpointTuple,
    encode_endpoint,
    encode_route_update,
    update_bytes,
)

text = st.text(max_size=150)   # unicode, empty, and longer than 127 bytes (2-byte lengths)
endpoint_st = st.tuples(text, text, text)
changes_st = st.dictionaries(text, st.lists(endpoint_st, max_size=4), max_size=12)


def test_endpoint_bytes_with_a_concurrency_limit() -> None:
    for limit in (1, 127, 128, 2**32 - 1):
        encoded = encode_endpoint(("p", "g", "r", limit))
        assert encoded == pb.Endpoint(pod_id="p", grpc_address="g", rest_address="r", max_concurrency=limit).SerializeToString()
    assert encode_endpoint(("p", "g", "r", 0)) == encode_endpoint(("p", "g", "r"))
    with pytest.raises(ValueError, match="uint32"):
        encode_endpoint(("p", "g", "r", 2**32))


def test_endpoint_bytes() -> None:
    a = ("p1", "10.0.0.1:8001", "http://10.0.0.1:8002")
    assert pb.Endpoint.FromString(encode_endpoint(a)) == pb.Endpoint(pod_id="p1", grpc_address=a[1], rest_address=a[2])
    assert encode_endpoint(("p", "", "")) == pb.Endpoint(pod_id="p").SerializeToString()


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(st.tuples(text, st.lists(endpoint_st, max_size=3)), max_size=6),
    version=st.sampled_from([0, 1, 127, 128, 2**40, 2**64 - 1]),
    snapshot=st.booleans(),
)
def test_update_bytes_joins_encoded_elements(
    parts: list[tuple[str, list[EndpointTuple]]], version: int, snapshot: bool
) -> None:
    """Elements encoded one by one (as the route log holds them), joined: the message with
    all of them, in order, and the version and snapshot flag."""
    elements = [encode_route_update([part]) for part in parts]
    expected = encode_route_update(parts, version=version, snapshot=snapshot)
    assert update_bytes(elements, version=version, snapshot=snapshot) == expected
    with pytest.raises(ValueError):
        update_bytes(elements, version=2**64)


def reference_update(
    routes: Sequence[tuple[str, Sequence[EndpointTuple]]],
    *,
    removed_models: Sequence[str],
    vmodels: Sequence[tuple[str, str]],
    removed_vmodels: Sequence[str],
    version: int,
    snapshot: bool,
) -> pb.RouteUpdate:
    """The same message built through the protobuf API."""
    return pb.RouteUpdate(
        snapshot=snapshot,
        version=version,
        routes=[
            pb.Route(model_id=m, endpoints=[pb.Endpoint(pod_id=p, grpc_address=g, rest_address=r) for p, g, r in eps])
            for m, eps in routes
        ],
        removed_models=removed_models,
        vmodels=[pb.VModelRoute(vmodel_id=v, model_id=m) for v, m in vmodels],
        removed_vmodels=removed_vmodels,
    )


def check_update(
    routes: Sequence[tuple[str, Sequence[EndpointTuple]]],
    *,
    removed_models: Sequence[str] = (),
    vmodels: Sequence[tuple[str, str]] = (),
    removed_vmodels: Sequence[str] = (),
    version: int = 0,
    snapshot: bool = False,
) -> bytes:
    """encode_route_update against the protobuf API; the bytes."""
    expected = reference_update(
        routes, removed_models=removed_models, vmodels=vmodels, removed_vmodels=removed_vmodels,
        version=version, snapshot=snapshot,
    )
    payload = encode_route_update(
        routes, removed_models=removed_models, vmodels=vmodels, removed_vmodels=removed_vmodels,
        version=version, snapshot=snapshot,
    )
    assert payload == expected.SerializeToString()
    assert pb.RouteUpdate.FromString(payload) == expected
    return payload


@settings(max_examples=150, deadline=None)
@given(
    routes=st.lists(st.tuples(text, st.lists(endpoint_st, max_size=4)), max_size=8),
    removed_models=st.lists(text, max_size=4),
    vmodels=st.lists(st.tuples(text, text), max_size=4),
    removed_vmodels=st.lists(text, max_size=4),
    version=st.sampled_from([0, 1, 127, 128, 16383, 16384, 2**40, 2**64 - 1]),
    snapshot=st.booleans(),
)
def test_one_update_with_every_field_is_protobufs_bytes(
    routes: list[tuple[str, list[EndpointTuple]]],
    removed_models: list[str],
    vmodels: list[tuple[str, str]],
    removed_vmodels: list[str],
    version: int,
    snapshot: bool,
) -> None:
    check_update(
        routes, removed_models=removed_models, vmodels=vmodels, removed_vmodels=removed_vmodels,
        version=version, snapshot=snapshot,
    )


@pytest.mark.parametrize("size", [0, 1, 60, 61, 62, 63, 125, 126, 127, 128, 129, 300, 16_300, 16_383, 16_384, 16_500, 2_100_000])
def test_length_prefixes_around_every_varint_boundary(size: int) -> None:
    # model ids, endpoint strings, endpoints and routes of 1, 2 and 3-byte varint lengths
    ep = ("p" * size, "g" * (size // 2), "")
    check_update([("m" * size, [ep]), ("m", [ep, ep, ep])], removed_models=["x" * size], vmodels=[("v" * size, "m")])
    many = [("10.0.0.1", "10.0.0.1:8001", "http://10.0.0.1:8002")] * (size // 40 + 1)
    check_update([("model-000001", many)], version=size)


def test_empty_endpoints_snapshot_and_version() -> None:
    a = ("p1", "10.0.0.1:8001", "http://10.0.0.1:8002")
    # an empty endpoint list is a route with no loaded copy: written, not dropped
    payload = check_update([("m1", []), ("m2", [a]), ("", [a]), ("m3", [("", "", "")])], version=9, snapshot=True)
    update = pb.RouteUpdate.FromString(payload)
    assert update.snapshot and update.version == 9
    assert [r.model_id for r in update.routes] == ["m1", "m2", "", "m3"]
    assert list(update.routes[0].endpoints) == [] and update.routes[3].endpoints[0] == pb.Endpoint()
    assert encode_route_update() == b""
    assert check_update([], removed_models=[""], removed_vmodels=[""], vmodels=[("", "")]) != b""
    with pytest.raises(ValueError):
        encode_route_update(version=-1)
    with pytest.raises(ValueError):
        encode_route_update(version=2**64)


def test_mapping_and_pairs_give_the_same_bytes() -> None:
    a = ("p1", "10.0.0.1:8001", "http://10.0.0.1:8002")
    assert encode_route_update({"m1": [a], "m2": []}, vmodels={"v": "m1"}) == encode_route_update(
        [("m1", [a]), ("m2", [])], vmodels=[("v", "m1")]
    )
