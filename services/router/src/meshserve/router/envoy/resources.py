"""Envoy v3 resources for the router's data path, built from the routing table.

Owns the mapping from `models {model_id: endpoints}` + `vmodels {vmodel_id: model_id}` to
the resources Envoy fetches over ADS: clusters (CDS), listeners (LDS), route
configurations (RDS) and, when sharded, scoped route configurations (SRDS).

PURE: no I/O, no grpc, no asyncio. Only the generated xds-protos message classes and the
standard library. Resources are returned *serialized* (`bytes`, the value of the `Any`
the ADS server sends), so comparing two states is a byte comparison and unchanged
resources keep the very same `bytes` object between builds.

Design and invariants:
- One cluster per distinct *set* of pod addresses, per protocol (gRPC over HTTP/2, REST
  over HTTP/1.1), named by a stable hash of the sorted addresses: 100,000 models on 20
  pods yield as many clusters as there are distinct placements, not one per model. A
  cluster exists iff at least one routed name uses it (plus the two slow-path clusters).
- A name (vmodel id or model id; a vmodel id wins, as in `RoutingTable.resolve`) is
  routed iff its concrete model id has at least one endpoint. Its entry in a generic
  matcher `exact_match_map` keyed by the `x-meshserve-model` header (set by route.lua)
  routes to the placement's cluster, and carries the concrete model id in
  `metadata.filter_metadata["envoy.filters.http.lua"]["model"]`; route.lua rewrites the
  request to it. Every other request matches nothing and goes to the slow path.
  That is the `matcher` layout: Envoy builds one Route per name.
- The `table` layout (the default): a shard has ONE RouteConfiguration, which both
  listeners use (the gRPC and the REST scope of a shard name it), with five routes whatever
  its size: the lookup route (matched while route.lua sets LOOKUP_HEADER), whose Lua
  metadata carries the shard's names as one string (`"<name> <gRPC cluster digest> <REST
  cluster digest>[ <model id>]\n"` per name, `-` where a protocol has no cluster) and its
  version `v`; per protocol the route to the cluster the CLUSTER_HEADER names (route.lua
  sets it from that table; it parses a shard's string once per version and keeps it as a
  Lua table); per protocol the slow path. Envoy then builds five routes per shard and
  copies one string, instead of building a Route per name: a burst of changes that touches
  every shard costs Envoy little more than the bytes, sent once for both listeners.
- `shards == 1`: one RouteConfiguration (table layout; the matcher layout: one per
  protocol) over RDS. `shards > 1`: scoped routes; the name's shard `shard_of(name)`
  (route.lua computes the same hash) selects a scope whose RouteConfiguration holds only
  that shard's names, so a change rebuilds one shard. A scope keyed `slow` routes
  everything to the slow path (Lua's default).
- `RouteBuilder` is incremental: per-name entries (matcher entries, or table lines) are
  built once and kept in their shard's dict, a shard's RouteConfiguration is re-serialized
  only when one of its names changed, by concatenating the kept entries (map entries of a
  protobuf message concatenate; table lines are strings, joined in the dict's order: no
  sorting); the table layout's configuration is framed by hand around the string
  (`TableEncoder`), the rest of it encoded once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from google.protobuf import any_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from meshserve.router.table import Endpoint

Protocol = Literal["grpc", "rest"]
Layout = Literal["table", "matcher"]
PROTOCOLS: tuple[Protocol, ...] = ("grpc", "rest")

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
TYPE_ORDER = (CLUSTER, LISTENER, SCOPED_ROUTE, ROUTE)
"""Make-before-break order: what a resource refers to is pushed before it."""

MODEL_HEADER = "x-meshserve-model"
SHARD_HEADER = "x-meshserve-shard"
CLUSTER_HEADER = "x-meshserve-cluster"
LOOKUP_HEADER = "x-meshserve-lookup"
SLOW_SCOPE = "slow"
HEDGE_AFTER_S = 1.0
"""A model route's per-try timeout, hedged (never failing the attempt it times): see `_route`.

Why not an HTTP/2 keepalive (PING) timeout, which tells a hung server from a slow one: a model
server on gRPC's default ping policy (MLServer's) answers a third PING received while it sent
nothing for 5 minutes with GOAWAY `too_many_pings` and closes the connection, so a keepalive
short enough to find a hung pod within seconds would kill every slow inference alone on its
connection. A hedge costs a duplicate attempt for requests slower than this, never a failure."""
LUA_FILTER = "envoy.filters.http.lua"
ROUTING_HEADERS_TO_REMOVE = (MODEL_HEADER, SHARD_HEADER, CLUSTER_HEADER, LOOKUP_HEADER)

Resources = dict[str, dict[str, bytes]]
"""type URL -> resource name -> serialized resource."""


@dataclass(frozen=True)
class DataPathConfig:
    """What the Envoy data path needs besides the routing table."""

    slow_grpc_address: str
    """host:port of the Python router's gRPC server (the slow path)."""
    slow_rest_address: str
    """http://host:port of the Python router's REST server."""
    lua_source: str
    """The route.lua script (see `script.route_script`)."""
    grpc_listen: tuple[str, int] = ("127.0.0.1", 8033)
    rest_listen: tuple[str, int] = ("127.0.0.1", 8008)
    connect_timeout_s: float = 1.0
    """Upstream TCP connect timeout; a dead pod is ejected by outlier detection."""
    request_timeout_s: float = 0.0
    """Route timeout for REST (0: none). gRPC uses the client's grpc-timeout."""
    max_body_bytes: int = 64 << 20
    """Per-connection buffer limit: route.lua buffers a unary request body to read it."""
    shards: int = 1
    """1: one RouteConfiguration per protocol; N > 1: N scoped route configurations."""
    layout: Layout = "table"
    """How a shard holds its names: a table string in Lua metadata, or a matcher of Routes."""
    tls: TlsFiles | None = None
    """Server TLS on both listeners (Envoy terminates it); None: plaintext."""
    access_log_path: str = ""
    """Where Envoy writes one line per request (ACCESS_LOG_FORMAT); "": no access log."""
    hedge_after_s: float = HEDGE_AFTER_S
    """Model routes' hedged per-try timeout (see HEDGE_AFTER_S); 0: none (a request to a hung pod
    waits for its deadline, a slow one never runs twice)."""


@dataclass(frozen=True)
class TlsFiles:
    cert_file: str
    key_file: str
    ca_file: str = ""
    """Set: clients must present a certificate signed by it."""


ACCESS_LOG_FORMAT = (
    "%UPSTREAM_CLUSTER% %REQ(MM-MODEL-ID)% %REQ(:PATH)% %RESPONSE_CODE% %GRPC_STATUS_NUMBER% "
    "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)% %BYTES_RECEIVED% %BYTES_SENT% "
    "%COMMON_DURATION(US_TX_BEG:US_RX_END:us)% %UPSTREAM_HOST% %DYNAMIC_METADATA(meshserve:vmodel)%\n"
)
"""One access-log line: cluster, concrete model id, path, HTTP status, gRPC status, µs in
Envoy (first byte received to last byte sent), request and response body bytes, µs from the
first byte sent to the pod to the last byte received from it, the pod's host:port Envoy
chose, the vmodel the request named (route.lua's dynamic metadata). usage.parse_line reads
it; `-` stands for a missing value. Microseconds: the router's latency buckets start at
0.5 ms, so whole milliseconds (%DURATION%) would put most warm requests in the wrong one."""


@dataclass(frozen=True)
class Diff:
    """What changed between two `Resources`, per type URL."""

    changed: dict[str, set[str]] = field(default_factory=dict)
    removed: dict[str, set[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.changed.values()) and not any(self.removed.values())


def diff(old: Resources, new: Resources) -> Diff:
    """Names added or changed in `new`, and names gone from it, per type."""
    out = Diff()
    for type_url in set(old) | set(new):
        before, after = old.get(type_url, {}), new.get(type_url, {})
        changed = {name for name, body in after.items() if before.get(name) != body}
        removed = set(before) - set(after)
        if changed:
            out.changed[type_url] = changed
        if removed:
            out.removed[type_url] = removed
    return out


def shard_of(name: str, shards: int) -> str:
    """The shard of `name`: a 31-multiplier string hash mod `shards` (route.lua matches it)."""
    if shards <= 1:
        return "0"
    h = 0
    for byte in name.encode():
        h = (h * 31 + byte) % 4294967296
    return str(h % shards)


def scope_key(protocol: Protocol, shard: str) -> str:
    """The SHARD_HEADER value route.lua sets: every listener gets every scope over SRDS,
    so the keys of the two listeners' scopes must differ."""
    return f"{protocol}-{shard}"


def cluster_name(protocol: Protocol, addresses: Iterable[str]) -> str:
    """Stable name of the cluster for a set of `host:port` addresses."""
    digest = hashlib.sha256("\n".join(sorted(set(addresses))).encode()).hexdigest()[:16]
    return f"ms-{protocol}-{digest}"


def failover_cluster(cluster: str) -> str:
    """The aggregate cluster routes point at: the placement's pods, then the slow path."""
    return f"{cluster}-or-slow"


def build_failover_cluster(cluster: str, protocol: Protocol) -> bytes:
    """Aggregate of [the placement's cluster, the slow path]: a request whose pods all
    refuse it (a copy that died with its pod) is retried on the Python router, which asks
    the scheduler and re-places the model, as it does for requests it forwards itself."""
    aggregate = cluster_pb2.Cluster(name=failover_cluster(cluster), lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED)
    aggregate.connect_timeout.FromMilliseconds(1000)
    _no_circuit_breaking(aggregate)
    aggregate.cluster_type.name = "envoy.clusters.aggregate"
    aggregate.cluster_type.typed_config.CopyFrom(
        _any(aggregate_pb2.ClusterConfig(clusters=[cluster, slow_cluster(protocol)]))
    )
    return _ser(aggregate)


def slow_cluster(protocol: Protocol) -> str:
    return f"ms-slow-{protocol}"


def route_name(protocol: Protocol, shard: str | None = None) -> str:
    """A protocol's RouteConfiguration (the matcher layout's, and the slow scope's)."""
    return f"ms-{protocol}" if shard is None else f"ms-{protocol}-{shard}"


def table_route_name(shard: str | None = None) -> str:
    """The table layout's RouteConfiguration of a shard: one, both listeners use it."""
    return "ms-table" if shard is None else f"ms-table-{shard}"


def _dialable(address: str) -> bool:
    try:
        host, port = host_port(address)
    except ValueError:
        return False
    return bool(host) and 0 < port < 65536


def host_port(address: str) -> tuple[str, int]:
    """`host:port` or `http://host:port` -> (host, port)."""
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


# -- protobuf helpers ---------------------------------------------------------------------
def _any(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _ser(message: Any) -> bytes:
    return bytes(message.SerializeToString(deterministic=True))


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def wire_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) in protobuf encoding."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _number(message: Any, name: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[name].number)


# -- clusters -------------------------------------------------------------------------------
def build_cluster(name: str, addresses: Iterable[str], *, protocol: Protocol, connect_timeout_s: float) -> bytes:
    """A cluster over `addresses` (STATIC for IP literals, else STRICT_DNS)."""
    hosts = sorted({host_port(a) for a in addresses})
    cluster = cluster_pb2.Cluster(name=name, lb_policy=cluster_pb2.Cluster.LEAST_REQUEST)
    cluster.type = cluster_pb2.Cluster.STATIC if all(_is_ip(h) for h, _ in hosts) else cluster_pb2.Cluster.STRICT_DNS
    cluster.connect_timeout.FromMilliseconds(int(connect_timeout_s * 1000))
    cluster.load_assignment.cluster_name = name
    # while any copy is healthy, every request goes to the copies: the failover aggregate
    # would otherwise spill a share to the slow path as soon as one copy is ejected
    cluster.load_assignment.policy.overprovisioning_factor.value = 100_000
    locality = cluster.load_assignment.endpoints.add()
    for host, port in hosts:
        socket = locality.lb_endpoints.add().endpoint.address.socket_address
        socket.address, socket.port_value = host, port
    _no_circuit_breaking(cluster)
    # a pod that stops answering (connect failures, 5xx, gateway errors) is ejected for a while
    cluster.outlier_detection.CopyFrom(outlier_detection_pb2.OutlierDetection())
    cluster.outlier_detection.consecutive_gateway_failure.value = 3
    cluster.outlier_detection.enforcing_consecutive_gateway_failure.value = 100
    options = hpo_pb2.HttpProtocolOptions()
    if protocol == "grpc":
        options.explicit_http_config.http2_protocol_options.SetInParent()
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
        _any(options)
    )
    return _ser(cluster)


def _no_circuit_breaking(cluster: cluster_pb2.Cluster) -> None:
    """Retries are how a dead copy's requests reach another copy or the slow path: Envoy's
    default allows 3 at once per cluster (the route's, here the failover aggregate), less
    than one burst of a killed pod's requests; the model servers bound their own load."""
    thresholds = cluster.circuit_breakers.thresholds.add()
    thresholds.max_retries.value = 100_000
    thresholds.max_requests.value = thresholds.max_pending_requests.value = 100_000


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- routes ---------------------------------------------------------------------------------
def _route(
    cluster: str, *, protocol: Protocol, timeout_s: float, model: str | None, hedge_after_s: float = HEDGE_AFTER_S
) -> rc_pb2.Route:
    """A route to `cluster`; `model` not None: to a model's copies (with the retry policy),
    "" when the route serves many models (the table layout)."""
    route = rc_pb2.Route()
    route.match.prefix = "/"
    route.route.cluster = cluster
    if protocol == "grpc":
        route.route.timeout.FromSeconds(0)  # the client's grpc-timeout bounds the call
        route.route.max_stream_duration.grpc_timeout_header_max.FromSeconds(0)
    else:
        route.route.timeout.FromMilliseconds(int(timeout_s * 1000))
    if model is not None:
        if model:  # the matcher layout: route.lua reads the concrete id here
            route.metadata.filter_metadata[LUA_FILTER].update({"model": model})
        # a copy that refuses the connection, resets it (a pod killed mid-request) or
        # answers UNAVAILABLE: another host of the placement, then the slow path (the
        # failover cluster's second priority), as the Python path retries such a request;
        # nothing is retried once the answer has started
        policy = route.route.retry_policy
        policy.retry_on = "connect-failure,refused-stream,reset,unavailable,retriable-headers,retriable-status-codes"
        policy.num_retries.value = 2
        # a copy unloaded while its route was on its way out answers NOT_FOUND (gRPC: in the
        # trailers-only headers; REST: 404): the slow path asks the scheduler again
        policy.retriable_headers.add(name="grpc-status").string_match.exact = "5"
        if protocol == "rest":
            policy.retriable_status_codes.append(404)
        policy.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts").typed_config.CopyFrom(
            _any(previous_hosts_pb2.PreviousHostsPredicate())
        )
        policy.host_selection_retry_max_attempts = 5  # picks that hit a host tried already
        policy.retry_priority.name = "envoy.retry_priorities.previous_priorities"
        policy.retry_priority.typed_config.CopyFrom(
            _any(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2))
        )
        # a copy on a hung pod (stopped: its kernel accepts the connection, nothing answers)
        # would hold the request until the client's deadline. After HEDGE_AFTER_S without
        # an answer another attempt goes out (another copy, then the slow path, which asks
        # the scheduler to probe the pod: dataplane.DataPlane) and the first answer wins;
        # the attempt that is late is NOT cancelled, so a slow model's request is never
        # failed by it (its cost: up to num_retries more attempts of a request that slow).
        if hedge_after_s > 0:
            policy.per_try_timeout.FromMilliseconds(int(hedge_after_s * 1000))
            route.route.hedge_policy.hedge_on_per_try_timeout = True
    return route


def entry_bytes(
    name: str, cluster: str, model: str, *, protocol: Protocol, timeout_s: float, hedge_after_s: float = HEDGE_AFTER_S
) -> bytes:
    """One `exact_match_map` entry, serialized as a one-entry MatchMap (entries concatenate)."""
    action = extension_pb2.TypedExtensionConfig(
        name="route",
        typed_config=_any(_route(cluster, protocol=protocol, timeout_s=timeout_s, model=model, hedge_after_s=hedge_after_s)),
    )
    match_map = matcher_pb2.Matcher.MatcherTree.MatchMap()
    match_map.map[name].action.CopyFrom(action)
    return _ser(match_map)


def route_configuration(name: str, entries: Iterable[bytes], *, protocol: Protocol, timeout_s: float) -> bytes:
    """A RouteConfiguration: `entries` matched on MODEL_HEADER, anything else -> slow path."""
    slow = _route(slow_cluster(protocol), protocol=protocol, timeout_s=timeout_s, model=None)
    config = route_pb2.RouteConfiguration(name=name, request_headers_to_remove=list(ROUTING_HEADERS_TO_REMOVE))
    host = rc_pb2.VirtualHost(name=name, domains=["*"])
    joined = b"".join(entries)
    if not joined:  # an exact_match_map must have an entry: a plain route then
        host.routes.append(slow)
        return _ser(config) + wire_field(_number(config, "virtual_hosts"), _ser(host))
    tree = matcher_pb2.Matcher.MatcherTree()
    tree.input.name = MODEL_HEADER
    tree.input.typed_config.Pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=MODEL_HEADER))
    no_match = matcher_pb2.Matcher()
    no_match.on_no_match.action.name = "slow"
    no_match.on_no_match.action.typed_config.Pack(slow)
    tree_bytes = _ser(tree) + wire_field(_number(tree, "exact_match_map"), joined)
    matcher_bytes = wire_field(_number(no_match, "matcher_tree"), tree_bytes) + _ser(no_match)
    host_bytes = _ser(host) + wire_field(_number(host, "matcher"), matcher_bytes)
    return _ser(config) + wire_field(_number(config, "virtual_hosts"), host_bytes)


_TABLE_NAME = re.compile(r"[!-~]{1,512}")


def _table_name(name: str) -> bool:
    """A name a table line can carry (route.lua's valid_name: 1-512 printable ASCII characters,
    no space); others stay with the slow path. A shard table's line: `<name> <gRPC cluster
    digest> <REST cluster digest>[ <model id>]\n`, the model id written for a vmodel (route.lua
    logs the vmodel then)."""
    return _TABLE_NAME.fullmatch(name) is not None


def _table_routes(timeout_s: float, hedge_after_s: float = HEDGE_AFTER_S) -> list[rc_pb2.Route]:
    """The table layout's routes, in match order (one RouteConfiguration serves both listeners):
    the lookup route route.lua gets the table from (LOOKUP_HEADER set; answers 500 if a request
    ever leaves route.lua on it), then per protocol the route to the cluster CLUSTER_HEADER
    names (`ms-<protocol>-...`), then the slow path of the request's protocol (its
    SHARD_HEADER is `<protocol>-...`). The lookup route's metadata is added by `TableEncoder`."""
    lookup = rc_pb2.Route()
    lookup.match.prefix = "/"
    lookup.match.headers.add(name=LOOKUP_HEADER, present_match=True)
    lookup.direct_response.status = 500
    lookup.direct_response.body.inline_string = "meshserve: a request was left on the route table's lookup route"
    routes = [lookup]
    for protocol in PROTOCOLS:
        to_pod = _route("", protocol=protocol, timeout_s=timeout_s, model="", hedge_after_s=hedge_after_s)
        to_pod.route.ClearField("cluster")
        to_pod.route.cluster_header = CLUSTER_HEADER
        to_pod.match.headers.add(name=CLUSTER_HEADER).string_match.prefix = f"ms-{protocol}-"
        routes.append(to_pod)
    for protocol in PROTOCOLS:
        slow = _route(slow_cluster(protocol), protocol=protocol, timeout_s=timeout_s, model=None)
        slow.match.headers.add(name=SHARD_HEADER).string_match.prefix = f"{protocol}-"
        routes.append(slow)
    return routes


_ROUTE_FIELDS = rc_pb2.Route.DESCRIPTOR.fields_by_name
_METADATA = _ROUTE_FIELDS["metadata"].number
_ROUTES = rc_pb2.VirtualHost.DESCRIPTOR.fields_by_name["routes"].number
_VIRTUAL_HOSTS = route_pb2.RouteConfiguration.DESCRIPTOR.fields_by_name["virtual_hosts"].number


class TableEncoder:
    """Serializes the table layout's RouteConfigurations: everything but the lookup route's
    metadata is encoded once; a build frames the shard's table string (`t`) and a version (`v`,
    a counter: each build's differs, so route.lua parses a table again exactly when it changed)
    into `Metadata.filter_metadata[LUA_FILTER]` by hand (Metadata, Struct and Value wire
    format: map entries are key 1 / value 2, Value.string_value is 3). What it writes parses to
    the RouteConfiguration `_table_routes` describes with that metadata (a unit test checks)."""

    def __init__(self, timeout_s: float, hedge_after_s: float = HEDGE_AFTER_S) -> None:
        lookup, *rest = _table_routes(timeout_s, hedge_after_s)
        self._lookup = _ser(lookup)
        self._rest = b"".join(wire_field(_ROUTES, _ser(route)) for route in rest)
        self._heads: dict[str, tuple[bytes, bytes]] = {}
        self._filter_key = wire_field(1, LUA_FILTER.encode())
        self._version = 0

    def _head(self, name: str) -> tuple[bytes, bytes]:
        head = self._heads.get(name)
        if head is None:
            config = route_pb2.RouteConfiguration(name=name, request_headers_to_remove=list(ROUTING_HEADERS_TO_REMOVE))
            head = self._heads[name] = (_ser(config), _ser(rc_pb2.VirtualHost(name=name, domains=["*"])))
        return head

    def build(self, name: str, text: bytes) -> bytes:
        """The RouteConfiguration `name` with the table `text` (lines of `_table_line`)."""
        self._version += 1
        version = b"%x" % self._version
        fields = wire_field(1, b"\n\x01t" + wire_field(2, wire_field(3, text))) + wire_field(1, b"\n\x01v" + wire_field(2, wire_field(3, version)))
        metadata = wire_field(1, self._filter_key + wire_field(2, fields))
        config, host = self._head(name)
        host += wire_field(_ROUTES, self._lookup + wire_field(_METADATA, metadata)) + self._rest
        return config + wire_field(_VIRTUAL_HOSTS, host)


def table_configuration(name: str, lines: Iterable[str], *, timeout_s: float) -> bytes:
    """A RouteConfiguration of the table layout holding `lines` (see `TableEncoder`)."""
    return TableEncoder(timeout_s).build(name, "".join(lines).encode())


def scoped_route(protocol: Protocol, shard: str, route_configuration: str | None = None) -> bytes:
    """The scope keyed `scope_key(protocol, shard)`: to `route_configuration` (by default the
    protocol's own one of that shard)."""
    scope = scoped_route_pb2.ScopedRouteConfiguration(
        name=f"ms-{protocol}-scope-{shard}", route_configuration_name=route_configuration or route_name(protocol, shard)
    )
    scope.key.fragments.add(string_key=scope_key(protocol, shard))
    return _ser(scope)


# -- listeners ------------------------------------------------------------------------------
def _ads_source() -> config_source_pb2.ConfigSource:
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    source.ads.SetInParent()
    return source


def build_listener(protocol: Protocol, config: DataPathConfig) -> bytes:
    """Listener + HCM: route.lua, then the router filter; routes from RDS or scoped RDS."""
    host, port = config.grpc_listen if protocol == "grpc" else config.rest_listen
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=f"ms_{protocol}", codec_type=hcm_pb2.HttpConnectionManager.AUTO)
    if config.shards <= 1:
        hcm.rds.route_config_name = table_route_name() if config.layout == "table" else route_name(protocol)
        hcm.rds.config_source.CopyFrom(_ads_source())
    else:
        scoped = hcm.scoped_routes
        scoped.name = f"ms-{protocol}-scopes"
        extractor = scoped.scope_key_builder.fragments.add().header_value_extractor
        extractor.name, extractor.index = SHARD_HEADER, 0
        scoped.rds_config_source.CopyFrom(_ads_source())
        scoped.scoped_rds.scoped_rds_config_source.CopyFrom(_ads_source())
    lua = lua_pb2.Lua()
    lua.default_source_code.inline_string = f'local PROTOCOL = "{protocol}"\n{config.lua_source}'
    hcm.http_filters.add(name=LUA_FILTER, typed_config=_any(lua))
    hcm.http_filters.add(name="envoy.filters.http.router", typed_config=_any(router_pb2.Router()))
    if config.access_log_path:
        log = file_pb2.FileAccessLog(path=config.access_log_path)
        log.log_format.text_format_source.inline_string = ACCESS_LOG_FORMAT
        hcm.access_log.append(accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=_any(log)))
    listener = listener_pb2.Listener(name=f"ms-{protocol}")
    listener.address.socket_address.CopyFrom(address_pb2.SocketAddress(address=host, port_value=port))
    listener.per_connection_buffer_limit_bytes.value = config.max_body_bytes
    chain = listener.filter_chains.add()
    chain.filters.add(name="envoy.filters.network.http_connection_manager", typed_config=_any(hcm))
    if config.tls is not None:
        chain.transport_socket.name = "envoy.transport_sockets.tls"
        chain.transport_socket.typed_config.CopyFrom(_any(_downstream_tls(config.tls, protocol)))
    return _ser(listener)


def _downstream_tls(files: TlsFiles, protocol: Protocol) -> tls_pb2.DownstreamTlsContext:
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    certificate = common.tls_certificates.add()
    certificate.certificate_chain.filename, certificate.private_key.filename = files.cert_file, files.key_file
    # gRPC clients require h2 by ALPN; the REST door speaks both
    common.alpn_protocols.extend(["h2"] if protocol == "grpc" else ["h2", "http/1.1"])
    if files.ca_file:
        common.validation_context.trusted_ca.filename = files.ca_file
        context.require_client_certificate.value = True
    return context


# -- the incremental builder ----------------------------------------------------------------
class _Placement:
    """A set of endpoints as Envoy routes it: the cluster per protocol (none for a protocol
    whose addresses Envoy cannot dial: that protocol's requests stay with the slow path), and
    the table line's columns for it (` <grpc digest> <rest digest>`, `-` for none).

    Copies with a concurrency limit (`Endpoint.max_concurrency` > 0) get no cluster: the
    Python router queues a limited copy's requests (balance.CopySlots), which Envoy cannot
    do (a circuit breaker counts per cluster, ours are shared by every model of a placement,
    and Envoy never retries an overflowed request, so it cannot spill to the slow path)."""

    __slots__ = ("clusters", "columns")

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.clusters: dict[Protocol, tuple[str, tuple[str, ...]]] = {}  # protocol -> (cluster, addresses)
        limited = any(_PLACEMENT_KEY(e)[2] for e in endpoints)
        for protocol in PROTOCOLS if not limited else ():
            given = {e.grpc_address if protocol == "grpc" else e.rest_address for e in endpoints}
            addresses = tuple(sorted(a for a in given if _dialable(a)))
            if addresses:
                self.clusters[protocol] = (cluster_name(protocol, addresses), addresses)
        # cluster_name: "ms-<protocol>-<digest>", both prefixes 8 characters
        self.columns = "".join(f" {self.clusters[p][0][8:]}" if p in self.clusters else " -" for p in PROTOCOLS)


_PLACEMENT_KEY = attrgetter("grpc_address", "rest_address", "max_concurrency")
"""What of an endpoint a placement depends on: the memo's key is a tuple of these, compared
in C (Endpoint's dataclass hash and equality are Python functions: twice the cost)."""

_Target = tuple[str, _Placement, bool]
"""(concrete model id, its placement, the name is a vmodel id); placements compare by identity."""


class RouteBuilder:
    """Keeps the routing table's Envoy form and rebuilds only what a change touches.

    `replace(models, vmodels)` sets the whole table, `change(...)` applies a change;
    `resources()` returns the current `Resources` (unchanged resources are the same `bytes`
    objects as last time). Per routed name it keeps its target and its table line (or its
    matcher entry per protocol) in its shard's dict; a shard's RouteConfiguration is built
    again only when one of its lines changed, by joining the dict's values (no sorting: the
    order is the order names came in, which route.lua does not care about).
    """

    def __init__(self, config: DataPathConfig) -> None:
        self.config = config
        self.shards = max(1, config.shards)
        self.table = config.layout == "table"
        self.models: dict[str, tuple[Endpoint, ...]] = {}
        self.vmodels: dict[str, str] = {}
        self._vmodels_of: dict[str, set[str]] = {}  # model id -> vmodels naming it
        self._targets: dict[str, _Target] = {}  # routed name -> target
        self._lines: dict[str, dict[str, str]] = {s: {} for s in self._shard_names()}  # table: shard -> name -> line
        self._entries: dict[Protocol, dict[str, dict[str, bytes]]] = {p: {} for p in PROTOCOLS}  # matcher
        self._shard_of: dict[str, str] = {}  # name -> shard (shard_of is a Python loop per byte)
        self._placements: dict[tuple[tuple[str, str, int], ...], _Placement] = {}  # memo, by addresses
        self._placement_refs: dict[str, int] = {}  # placement columns -> routed names on it
        self._routes: dict[str, bytes] = {}
        self._cluster_refs: dict[str, int] = {}
        self._clusters: dict[str, bytes] = {}
        self._encoder = TableEncoder(config.request_timeout_s, config.hedge_after_s)
        self._dirty: set[str] = set(self._shard_names())  # shards to re-serialize
        self._static = self._static_resources()

    def _shard_names(self) -> list[str]:
        return ["0"] if self.shards == 1 else [str(i) for i in range(self.shards)]

    def _static_resources(self) -> Resources:
        cfg = self.config
        clusters = {
            slow_cluster("grpc"): build_cluster(
                slow_cluster("grpc"), [cfg.slow_grpc_address], protocol="grpc", connect_timeout_s=cfg.connect_timeout_s
            ),
            slow_cluster("rest"): build_cluster(
                slow_cluster("rest"), [cfg.slow_rest_address], protocol="rest", connect_timeout_s=cfg.connect_timeout_s
            ),
        }
        listeners = {f"ms-{p}": build_listener(p, cfg) for p in PROTOCOLS}
        out: Resources = {CLUSTER: clusters, LISTENER: listeners, ROUTE: {}}
        if self.shards > 1:
            out[SCOPED_ROUTE] = {}
            for p in PROTOCOLS:
                for shard in self._shard_names():
                    target = table_route_name(shard) if self.table else route_name(p, shard)
                    out[SCOPED_ROUTE][f"ms-{p}-scope-{shard}"] = scoped_route(p, shard, target)
                out[SCOPED_ROUTE][f"ms-{p}-scope-{SLOW_SCOPE}"] = scoped_route(p, SLOW_SCOPE)
                out[ROUTE][route_name(p, SLOW_SCOPE)] = route_configuration(
                    route_name(p, SLOW_SCOPE), [], protocol=p, timeout_s=cfg.request_timeout_s
                )
        return out

    # -- changes ------------------------------------------------------------------------
    def replace(self, models: Mapping[str, tuple[Endpoint, ...]], vmodels: Mapping[str, str]) -> None:
        """Make the table `models`/`vmodels` (compares the whole table: O(table size))."""
        self.change(
            models={m: e for m, e in models.items() if self.models.get(m) != e},
            removed_models=self.models.keys() - models.keys(),
            vmodels={v: m for v, m in vmodels.items() if self.vmodels.get(v) != m},
            removed_vmodels=self.vmodels.keys() - vmodels.keys(),
        )

    def change(
        self,
        *,
        models: Mapping[str, tuple[Endpoint, ...]] = {},
        removed_models: Iterable[str] = (),
        vmodels: Mapping[str, str] = {},
        removed_vmodels: Iterable[str] = (),
    ) -> None:
        """Apply a change (as a `RouteUpdate` carries it): O(size of the change + vmodels
        of the changed models)."""
        removed_models, removed_vmodels = list(removed_models), list(removed_vmodels)
        for vmodel_id in [*removed_vmodels, *vmodels]:
            old = self.vmodels.pop(vmodel_id, None)
            if old is not None:
                self._vmodels_of[old].discard(vmodel_id)
        for vmodel_id, model_id in vmodels.items():
            self.vmodels[vmodel_id] = model_id
            self._vmodels_of.setdefault(model_id, set()).add(vmodel_id)
        for model_id in removed_models:
            self.models.pop(model_id, None)
        self.models.update(models)
        affected = set(models)
        affected.update(removed_models, vmodels, removed_vmodels)
        if self._vmodels_of:  # vmodels naming a model whose endpoints changed
            for model_id in [*models, *removed_models]:
                named = self._vmodels_of.get(model_id)
                if named:
                    affected.update(named)
        self._refresh(affected)

    def _placement(self, key: tuple[tuple[str, str, int], ...], endpoints: tuple[Endpoint, ...]) -> _Placement:
        """A new placement, memoized by its endpoints' addresses (the caller looked already)."""
        if len(self._placements) >= 10_000:  # placements come and go: keep the memo bounded
            self._placements.clear()
        placement = self._placements[key] = _Placement(endpoints)
        return placement

    def _refresh(self, names: Iterable[str]) -> None:
        """Bring the names' routes up to date with `models`/`vmodels`: per name a few dict
        operations and, in the table layout, one string (a burst of 10,000 changes is a loop
        of 10,000 of these, so it keeps its lookups in locals)."""
        vmodels, models, targets, shard_cache = self.vmodels, self.models, self._targets, self._shard_of
        placements, dirty, table, shards = self._placements, self._dirty, self.table, self.shards
        key_of = _PLACEMENT_KEY
        lines_of = self._lines
        fits = _TABLE_NAME.fullmatch
        for name in names:
            vmodel = vmodels.get(name)
            model = name if vmodel is None else vmodel
            endpoints = models.get(model)
            new: _Target | None = None
            if endpoints:
                key = tuple(map(key_of, endpoints))
                placement = placements.get(key) or self._placement(key, endpoints)
                if placement.clusters:
                    new = (model, placement, vmodel is not None)
            old = targets.get(name)
            if old == new:
                continue
            shard = shard_cache.get(name)
            if shard is None:
                shard = shard_cache[name] = shard_of(name, shards)
            dirty.add(shard)
            # the new clusters are referenced before the old ones are let go: a cluster both
            # use is kept, not rebuilt
            if new is not None:
                targets[name] = new
                self._ref_placement(new[1])
            else:
                del targets[name]
                del shard_cache[name]
            if old is not None:
                self._unref_placement(old[1])
            if table:
                lines = lines_of[shard]
                if new is None or fits(name) is None or (vmodel is not None and fits(model) is None):
                    lines.pop(name, None)
                elif vmodel is None:
                    lines[name] = name + new[1].columns + "\n"
                else:
                    lines[name] = f"{name}{new[1].columns} {model}\n"
                continue
            self._refresh_entries(name, shard, new)

    def _refresh_entries(self, name: str, shard: str, new: _Target | None) -> None:
        """The matcher layout: the name's map entry per protocol."""
        for protocol in PROTOCOLS:
            entries = self._entries[protocol].setdefault(shard, {})
            placed = new[1].clusters.get(protocol) if new is not None else None
            if new is None or placed is None:
                entries.pop(name, None)
                continue
            entries[name] = entry_bytes(
                name, failover_cluster(placed[0]), new[0], protocol=protocol, timeout_s=self.config.request_timeout_s,
                hedge_after_s=self.config.hedge_after_s,
            )

    def _ref_placement(self, placement: _Placement) -> None:
        count = self._placement_refs.get(placement.columns, 0)
        if count == 0:
            for protocol, (cluster, addresses) in placement.clusters.items():
                self._ref(cluster, addresses, protocol)
        self._placement_refs[placement.columns] = count + 1

    def _unref_placement(self, placement: _Placement) -> None:
        count = self._placement_refs[placement.columns] - 1
        if count:
            self._placement_refs[placement.columns] = count
            return
        del self._placement_refs[placement.columns]
        for cluster, _ in placement.clusters.values():
            self._unref(cluster)

    def _ref(self, cluster: str, addresses: tuple[str, ...], protocol: Protocol) -> None:
        count = self._cluster_refs.get(cluster, 0)
        if count == 0:
            self._clusters[cluster] = build_cluster(
                cluster, addresses, protocol=protocol, connect_timeout_s=self.config.connect_timeout_s
            )
            self._clusters[failover_cluster(cluster)] = build_failover_cluster(cluster, protocol)
        self._cluster_refs[cluster] = count + 1

    def _unref(self, cluster: str) -> None:
        count = self._cluster_refs[cluster] - 1
        if count:
            self._cluster_refs[cluster] = count
        else:
            del self._cluster_refs[cluster]
            del self._clusters[cluster]
            del self._clusters[failover_cluster(cluster)]

    # -- output -------------------------------------------------------------------------
    def resources(self) -> Resources:
        """The current resources; re-serializes only the shards changed since the last call."""
        timeout = self.config.request_timeout_s
        for shard in self._dirty:
            key = None if self.shards == 1 else shard
            if self.table:
                name = table_route_name(key)
                self._routes[name] = self._encoder.build(name, "".join(self._lines[shard].values()).encode())
                continue
            for protocol in PROTOCOLS:
                name = route_name(protocol, key)
                entries = self._entries[protocol].get(shard, {})
                self._routes[name] = route_configuration(name, entries.values(), protocol=protocol, timeout_s=timeout)
        self._dirty.clear()
        out: Resources = {type_url: dict(named) for type_url, named in self._static.items()}
        out[CLUSTER].update(self._clusters)
        out[ROUTE].update(self._routes)
        return out

    @property
    def routed_names(self) -> int:
        return len(self._targets)


def build(
    models: Mapping[str, tuple[Endpoint, ...]], vmodels: Mapping[str, str], config: DataPathConfig
) -> Resources:
    """All resources for one table state (a fresh `RouteBuilder`; use one to build incrementally)."""
    builder = RouteBuilder(config)
    builder.replace(models, vmodels)
    return builder.resources()
