"""Route publishing: `RouteUpdate` messages for changed routes, built fast.

PURE: no I/O, no clock. Builds the protobuf wire bytes directly (each pod's `Endpoint`
is encoded once per call and reused for every route that names it; a route is its
model id plus those pre-encoded endpoints), then parses each batch into a
`RouteUpdate` with one C-level `FromString`. Building the same messages field by field
through the Python protobuf API costs a Python call per route and per endpoint; this
costs one bytes join per route. The bytes are exactly what protobuf itself serialises
for the same messages (fields in number order, proto3 defaults omitted), tested.

Wire format used (proto/meshserve/v1/scheduler.proto):
  RouteUpdate: 1 snapshot (bool), 2 routes (Route, repeated), 6 version (uint64)
  Route:       1 model_id (string), 2 endpoints (Endpoint, repeated)
  Endpoint:    1 pod_id, 2 grpc_address, 3 rest_address (strings)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from meshserve.common.proto.meshserve.v1 import scheduler_pb2

EndpointTuple = tuple[str, str, str]
"""(pod_id, grpc_address, rest_address), as in `Endpoint`."""

_ROUTE_ENDPOINT = 0x12     # Route.endpoints: field 2, length-delimited
_UPDATE_SNAPSHOT = b"\x08\x01"   # RouteUpdate.snapshot = true (field 1, varint)
_UPDATE_VERSION = 0x30     # RouteUpdate.version: field 6, varint
_SHORT = [bytes((n,)) for n in range(128)]   # one-byte varints


def _varint(n: int) -> bytes:
    if n < 128:
        return _SHORT[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(data)) + data


def encode_endpoint(endpoint: EndpointTuple) -> bytes:
    """An `Endpoint` message's bytes (empty strings are omitted, as proto3 does)."""
    return b"".join(
        _field(tag, value.encode())
        for tag, value in zip((0x0A, 0x12, 0x1A), endpoint, strict=True)
        if value
    )


def encode_route_updates(
    changes: Mapping[str, Sequence[EndpointTuple]] | Iterable[tuple[str, Sequence[EndpointTuple]]],
    *,
    batch: int,
    version: int = 0,
    snapshot: bool = False,
) -> list[bytes]:
    """Serialised `RouteUpdate`s: `batch` routes per message, in the order given.

    `changes` maps a model id to its endpoints (in the order to publish; empty means
    registered without a loaded copy). Message k carries `version + k`.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    items = list(changes.items()) if isinstance(changes, Mapping) else list(changes)
    encoded: dict[EndpointTuple, bytes] = {}
    head = _UPDATE_SNAPSHOT if snapshot else b""
    out: list[bytes] = []
    short = _SHORT
    for lo in range(0, len(items), batch):
        parts = [head] if head else []
        append = parts.append
        for model, endpoints in items[lo : lo + batch]:
            name = model.encode()
            n = len(name)
            route = (b"\x0a" + short[n] if n < 128 else b"\x0a" + _varint(n)) + name if n else b""
            for endpoint in endpoints:
                body = encoded.get(endpoint)
                if body is None:
                    body = encoded[endpoint] = _field(_ROUTE_ENDPOINT, encode_endpoint(endpoint))
                route += body
            n = len(route)
            append(b"\x12" + short[n] if n < 128 else b"\x12" + _varint(n))
            append(route)
        v = version + lo // batch
        if v:
            append(bytes((_UPDATE_VERSION,)) + _varint(v))
        out.append(b"".join(parts))
    return out


def build_route_updates(
    changes: Mapping[str, Sequence[EndpointTuple]] | Iterable[tuple[str, Sequence[EndpointTuple]]],
    *,
    batch: int,
    version: int = 0,
    snapshot: bool = False,
) -> list[scheduler_pb2.RouteUpdate]:
    """`RouteUpdate` messages for `changes` (see `encode_route_updates`), `batch` routes each."""
    parse = scheduler_pb2.RouteUpdate.FromString
    return [
        parse(payload)
        for payload in encode_route_updates(changes, batch=batch, version=version, snapshot=snapshot)
    ]
