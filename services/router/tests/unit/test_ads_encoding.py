"""ads.py writes its xDS responses by hand: what it writes parses to the response protobuf builds."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from hypothesis import given
from hypothesis import strategies as st

from meshserve.router.envoy import ads
from meshserve.router.envoy import resources as res

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
BODIES = st.binary(max_size=300) | st.just(bytes(70_000))  # a body over 2^16: a 3-byte length


@given(
    resources=st.lists(st.tuples(NAMES, st.text(max_size=8), BODIES), max_size=5),
    removed=st.lists(NAMES, max_size=3),
    nonce=st.text(max_size=6),
)
def test_a_delta_response_parses_to_what_protobuf_builds(
    resources: list[tuple[str, str, bytes]], removed: list[str], nonce: str
) -> None:
    body = ads.encode_delta(res.ROUTE, nonce, "17", resources, removed)
    expected = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="17", type_url=res.ROUTE, nonce=nonce, removed_resources=removed
    )
    for name, version, resource in resources:
        item = expected.resources.add(name=name, version=version)
        item.resource.CopyFrom(any_pb2.Any(type_url=res.ROUTE, value=resource))
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(body) == expected


@given(bodies=st.lists(BODIES, max_size=5), version=st.text(max_size=8))
def test_a_sotw_response_parses_to_what_protobuf_builds(bodies: list[bytes], version: str) -> None:
    body = ads.encode_sotw(res.CLUSTER, "3", version, bodies)
    expected = discovery_pb2.DiscoveryResponse(
        version_info=version, type_url=res.CLUSTER, nonce="3",
        resources=[any_pb2.Any(type_url=res.CLUSTER, value=b) for b in bodies],
    )  # fmt: skip
    assert discovery_pb2.DiscoveryResponse.FromString(body) == expected


def test_messages_still_serialize_and_bytes_pass_through() -> None:
    response = discovery_pb2.DiscoveryResponse(version_info="1")
    assert ads._serialize(response) == response.SerializeToString()
    assert ads._serialize(b"\x0a\x011") == b"\x0a\x011"
