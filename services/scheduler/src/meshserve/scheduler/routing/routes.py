"""`RouteUpdate` wire bytes, built directly (the route table's updates and snapshots,
routing/table.py, are built from these pieces).

PURE: no I/O, no clock. Builds the protobuf wire bytes directly instead of going
through the Python protobuf API (a Python call per route and per endpoint):

* each distinct `Endpoint` is encoded once (a pod's endpoint is the same in every route
  that names it) and reused as bytes;
* a route is its length prefix, its model id and those pre-encoded endpoints, joined
  once (`route_element`); lengths under 128 take their prefixes from tables.

The bytes are exactly what protobuf itself serialises for the same message (fields in
number order, proto3 defaults omitted, repeated elements always written), tested
against `SerializeToString` in tests/unit/test_routes.py.

Wire format used (proto/meshserve/v1/scheduler.proto):
  RouteUpdate: 1 snapshot (bool), 2 routes (Route), 3 removed_models (string),
               4 vmodels (VModelRoute), 5 removed_vmodels (string), 6 version (uint64)
  Route:       1 model_id (string), 2 endpoints (Endpoint, repeated)
  Endpoint:    1 pod_id, 2 grpc_address, 3 rest_address (strings), 4 max_concurrency (uint32)
  VModelRoute: 1 vmodel_id, 2 model_id (strings)

May import: nothing of the scheduler (pure; in the pure-modules contract).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

EndpointTuple = tuple[str, str, str] | tuple[str, str, str, int]
"""(pod_id, grpc_address, rest_address[, max_concurrency]), as in `Endpoint`: the fourth element
only for a pod with a per-copy concurrency limit (absent or 0: unlimited)."""

Routes = Mapping[str, Sequence[EndpointTuple]] | Iterable[tuple[str, Sequence[EndpointTuple]]]
"""model id -> its endpoints, in the order to publish (empty: registered, no loaded copy)."""

_U64 = 1 << 64


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _heads(tag: int) -> list[bytes]:
    """tag + one-byte length, for every length < 128."""
    return [bytes((tag, n)) for n in range(128)]


# fields 1-3 (length-delimited) of any message: tag + one-byte length prefixes, by length
HEADS_1, HEADS_2, HEADS_3 = _heads(0x0A), _heads(0x12), _heads(0x1A)


def _string(table: list[bytes], value: str) -> bytes:
    """A string field, omitted when empty (proto3 singular)."""
    if not value:
        return b""
    data = value.encode()
    n = len(data)
    return (table[n] if n < 128 else table[0][:1] + _varint(n)) + data


def length_delimited(tag: int, data: bytes) -> bytes:
    """One length-delimited field or repeated element (`tag` is its tag byte): tag,
    varint length, data; written even when empty."""
    n = len(data)
    return (bytes((tag, n)) if n < 128 else bytes((tag,)) + _varint(n)) + data


def route_element(name: bytes, endpoints: bytes) -> bytes:
    """One `RouteUpdate.routes` element: the model id `name` (UTF-8) and `endpoints`, its
    endpoints' already-encoded `Route.endpoints` elements, joined. (Hot path: one call
    per route.)"""
    n = len(name)
    route = (HEADS_1[n] + name if n < 128 else length_delimited(0x0A, name)) + endpoints if n else endpoints
    n = len(route)
    if n < 128:
        return HEADS_2[n] + route
    if n < 16384:   # two-byte length: a route with a few endpoints
        return bytes((0x12, n & 0x7F | 0x80, n >> 7)) + route
    return length_delimited(0x12, route)


def encode_endpoint(endpoint: EndpointTuple) -> bytes:
    """An `Endpoint` message's bytes (empty strings are omitted, as proto3 does)."""
    pod_id, grpc_address, rest_address = endpoint[0], endpoint[1], endpoint[2]
    body = _string(HEADS_1, pod_id) + _string(HEADS_2, grpc_address) + _string(HEADS_3, rest_address)
    limit = endpoint[3] if len(endpoint) > 3 else 0
    if limit:
        if not 0 < limit < 1 << 32:
            raise ValueError(f"max_concurrency {limit} is not a uint32")
        body += b"\x20" + _varint(limit)  # field 4, varint
    return body


def _encode_routes(routes: Routes, parts: list[bytes], cache: dict[EndpointTuple, bytes]) -> None:
    """Append the `RouteUpdate.routes` elements of `routes` to `parts`.

    `cache` maps an endpoint to its `Route.endpoints` element bytes (filled as needed)."""
    items = routes.items() if isinstance(routes, Mapping) else routes
    get = cache.get
    for model, endpoints in items:
        encoded = b""
        for endpoint in endpoints:
            body = get(endpoint)
            if body is None:
                body = cache[endpoint] = length_delimited(0x12, encode_endpoint(endpoint))
            encoded += body
        parts.append(route_element(model.encode(), encoded))


def _encode_update(
    routes: Routes,
    removed_models: Iterable[str],
    vmodels: Mapping[str, str] | Iterable[tuple[str, str]],
    removed_vmodels: Iterable[str],
    version: int,
    snapshot: bool,
    cache: dict[EndpointTuple, bytes],
) -> bytes:
    parts: list[bytes] = []
    _encode_routes(routes, parts, cache)
    parts.extend(length_delimited(0x1A, m.encode()) for m in removed_models)
    pairs = vmodels.items() if isinstance(vmodels, Mapping) else vmodels
    parts.extend(length_delimited(0x22, _string(HEADS_1, v) + _string(HEADS_2, m)) for v, m in pairs)
    parts.extend(length_delimited(0x2A, v.encode()) for v in removed_vmodels)
    return update_bytes(parts, version=version, snapshot=snapshot)


def encode_route_update(
    routes: Routes = (),
    *,
    removed_models: Iterable[str] = (),
    vmodels: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    removed_vmodels: Iterable[str] = (),
    version: int = 0,
    snapshot: bool = False,
) -> bytes:
    """One serialised `RouteUpdate`: `routes` (upserts, in the order given), removed
    model ids, vmodel -> active model upserts, removed vmodel ids, `version`, `snapshot`."""
    return _encode_update(routes, removed_models, vmodels, removed_vmodels, version, snapshot, {})


def update_bytes(elements: Iterable[bytes], *, version: int, snapshot: bool = False) -> bytes:
    """A serialised `RouteUpdate` from already-encoded elements of its fields 2-5 (the
    route log's entries: see routing/log.py), with `version` and `snapshot` added. Repeated
    fields may come interleaved; protobuf parsers keep each field's elements in order."""
    if not 0 <= version < _U64:
        raise ValueError(f"version {version} is not a uint64")
    head = b"\x08\x01" if snapshot else b""
    tail = b"\x30" + _varint(version) if version else b""
    return head + b"".join(elements) + tail
