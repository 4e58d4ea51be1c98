"""routes.build_route_updates: same messages (and bytes) as building them through protobuf."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.scheduler.routes import (
    EndpointTuple,
    build_route_updates,
    encode_endpoint,
    encode_route_updates,
)

text = st.text(max_size=150)   # unicode, empty, and longer than 127 bytes (2-byte lengths)
endpoint_st = st.tuples(text, text, text)
changes_st = st.dictionaries(text, st.lists(endpoint_st, max_size=4), max_size=12)


def reference(
    changes: dict[str, list[EndpointTuple]], *, batch: int, version: int, snapshot: bool
) -> list[pb.RouteUpdate]:
    items = list(changes.items())
    out = []
    for k, lo in enumerate(range(0, len(items), batch)):
        update = pb.RouteUpdate(snapshot=snapshot, version=version + k)
        for model, endpoints in items[lo : lo + batch]:
            route = update.routes.add(model_id=model)
            for pid, grpc_address, rest_address in endpoints:
                route.endpoints.add(pod_id=pid, grpc_address=grpc_address, rest_address=rest_address)
        out.append(update)
    return out


@settings(max_examples=100, deadline=None)
@given(changes=changes_st, batch=st.integers(1, 5), version=st.sampled_from([0, 1, 127, 128, 2**40, 2**64 - 20]), snapshot=st.booleans())
def test_same_messages_and_bytes_as_protobuf(
    changes: dict[str, list[EndpointTuple]], batch: int, version: int, snapshot: bool
) -> None:
    expected = reference(changes, batch=batch, version=version, snapshot=snapshot)
    built = build_route_updates(changes, batch=batch, version=version, snapshot=snapshot)
    assert built == expected
    assert encode_route_updates(changes, batch=batch, version=version, snapshot=snapshot) == [
        m.SerializeToString() for m in expected
    ]
    # round trip: the routes read back are the routes given, in order
    routes = [(r.model_id, [(e.pod_id, e.grpc_address, e.rest_address) for e in r.endpoints]) for m in built for r in m.routes]
    assert routes == [(m, list(eps)) for m, eps in changes.items()]


def test_batches_versions_and_pairs() -> None:
    a = ("p1", "10.0.0.1:8001", "http://10.0.0.1:8002")
    b = ("p2", "10.0.0.2:8001", "http://10.0.0.2:8002")
    pairs = [("m1", [a, b]), ("m2", []), ("m3", [b])]
    updates = build_route_updates(pairs, batch=2, version=7)
    assert [len(u.routes) for u in updates] == [2, 1]
    assert [u.version for u in updates] == [7, 8]
    assert not updates[0].snapshot
    assert list(updates[0].routes[1].endpoints) == []
    assert updates[1].routes[0].endpoints[0] == pb.Endpoint(pod_id="p2", grpc_address=b[1], rest_address=b[2])
    assert build_route_updates({}, batch=10) == []
    assert pb.Endpoint.FromString(encode_endpoint(a)) == pb.Endpoint(pod_id="p1", grpc_address=a[1], rest_address=a[2])
    with pytest.raises(ValueError):
        build_route_updates(pairs, batch=0)
