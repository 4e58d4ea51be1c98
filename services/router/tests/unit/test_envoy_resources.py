"""resources.py: the routing table -> Envoy resources, checked by parsing what it emits."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2, scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.router.envoy import resources as res
from meshserve.router.table import Endpoint

PODS = {p: Endpoint(p, f"10.0.0.{i}:8033", f"http://10.0.0.{i}:8008") for i, p in enumerate("abcd", start=1)}


def config(shards: int = 1, layout: res.Layout = "table") -> res.DataPathConfig:
    return res.DataPathConfig(
        slow_grpc_address="127.0.0.1:9033", slow_rest_address="http://127.0.0.1:9008", lua_source="-- lua", shards=shards,
        layout=layout,
    )


def eps(pods: str) -> tuple[Endpoint, ...]:
    return tuple(PODS[p] for p in pods)


def routes(resources: res.Resources, protocol: res.Protocol = "grpc") -> dict[str, tuple[str, str | None]]:
    """name -> (cluster, concrete model) over all route configurations of a protocol."""
    out: dict[str, tuple[str, str | None]] = {}
    for name, body in resources[res.ROUTE].items():
        table = name.startswith("ms-table")  # the table layout's: both listeners use it
        if not table and not name.startswith(f"ms-{protocol}"):
            continue
        config = route_pb2.RouteConfiguration.FromString(body)
        assert list(config.request_headers_to_remove) == list(res.ROUTING_HEADERS_TO_REMOVE)
        (host,) = config.virtual_hosts
        if table:
            out.update(table_routes(host, protocol))
            continue
        if not host.HasField("matcher"):
            assert [r.route.cluster for r in host.routes] == [res.slow_cluster(protocol)]
            continue
        slow = route_components_pb2.Route()
        host.matcher.on_no_match.action.typed_config.Unpack(slow)
        assert slow.route.cluster == res.slow_cluster(protocol)
        tree = host.matcher.matcher_tree
        assert tree.input.name == res.MODEL_HEADER
        for key, on_match in tree.exact_match_map.map.items():
            route = route_components_pb2.Route()
            on_match.action.typed_config.Unpack(route)
            model = route.metadata.filter_metadata[res.LUA_FILTER].fields["model"].string_value
            out[key] = (route.route.cluster, model)
    return out


def table_routes(host: Any, protocol: res.Protocol) -> dict[str, tuple[str, str | None]]:
    """The table layout's routes: the lookup route with the table, per protocol the route to
    the cluster route.lua names, per protocol the slow path; the table's lines read as
    route.lua reads them for `protocol`."""
    lookup, grpc_pod, rest_pod, grpc_slow, rest_slow = host.routes
    assert [(h.name, h.present_match) for h in lookup.match.headers] == [(res.LOOKUP_HEADER, True)]
    assert lookup.direct_response.status == 500
    for p, to_pod, slow in (("grpc", grpc_pod, grpc_slow), ("rest", rest_pod, rest_slow)):
        assert to_pod.route.cluster_header == res.CLUSTER_HEADER
        assert [(h.name, h.string_match.prefix) for h in to_pod.match.headers] == [(res.CLUSTER_HEADER, f"ms-{p}-")]
        assert to_pod.route.retry_policy.num_retries.value == 2 and not to_pod.HasField("metadata")
        assert slow.route.cluster == res.slow_cluster(p) and not slow.HasField("metadata")
        # a copy that does not answer is hedged (not cancelled) after HEDGE_AFTER_S; the slow path is not
        assert to_pod.route.hedge_policy.hedge_on_per_try_timeout
        assert to_pod.route.retry_policy.per_try_timeout.ToMilliseconds() == int(res.HEDGE_AFTER_S * 1000)
        assert not slow.route.HasField("retry_policy") and not slow.route.HasField("hedge_policy")
        assert [(h.name, h.string_match.prefix) for h in slow.match.headers] == [(res.SHARD_HEADER, f"{p}-")]
    assert rest_pod.route.retry_policy.retriable_status_codes == [404]
    assert grpc_pod.route.max_stream_duration.HasField("grpc_timeout_header_max")
    fields = lookup.metadata.filter_metadata[res.LUA_FILTER].fields
    text, version = fields["t"].string_value, fields["v"].string_value
    assert version  # route.lua parses the table again when it changes
    out: dict[str, tuple[str, str | None]] = {}
    for entry in text.splitlines():
        name, grpc_digest, rest_digest, *model = entry.split(" ")
        digest = grpc_digest if protocol == "grpc" else rest_digest
        if digest != "-":
            out[name] = (f"ms-{protocol}-{digest}-or-slow", model[0] if model else name)
    return out


def test_the_table_encoder_writes_what_protobuf_would() -> None:
    """TableEncoder frames the metadata by hand: it parses to the message protobuf builds."""
    text = "m1 0123456789abcdef - \nvm 0123456789abcdef fedcba9876543210 m1\n"
    body = res.TableEncoder(timeout_s=30).build("ms-table-7", text.encode())
    expected = route_pb2.RouteConfiguration(name="ms-table-7", request_headers_to_remove=list(res.ROUTING_HEADERS_TO_REMOVE))
    host = expected.virtual_hosts.add(name="ms-table-7", domains=["*"])
    host.routes.extend(res._table_routes(30))
    host.routes[0].metadata.filter_metadata[res.LUA_FILTER].update({"t": text, "v": "1"})
    assert route_pb2.RouteConfiguration.FromString(body) == expected
    assert table_routes(route_pb2.RouteConfiguration.FromString(body).virtual_hosts[0], "rest") == {
        "vm": ("ms-rest-fedcba9876543210-or-slow", "m1")
    }


def test_a_vmodel_routes_to_its_model_with_the_concrete_id() -> None:
    out = res.build({"m1": eps("ab"), "m2": eps("c"), "m3": ()}, {"vm": "m1", "dangling": "nope"}, config())
    grpc_routes = routes(out)
    assert set(grpc_routes) == {"m1", "m2", "vm"}  # no copy, or no such model: the slow path
    placement = res.cluster_name("grpc", ["10.0.0.1:8033", "10.0.0.2:8033"])
    assert grpc_routes["vm"] == grpc_routes["m1"] == (res.failover_cluster(placement), "m1")
    assert routes(out, "rest")["vm"][1] == "m1"


def test_one_cluster_per_distinct_endpoint_set() -> None:
    models = {f"m{i}": eps(["ab", "ba", "cd", "a"][i % 4]) for i in range(1000)}
    clusters = res.build(models, {}, config())[res.CLUSTER]
    # {a,b} (either order), {c,d}, {a}; per protocol, each with its failover aggregate; plus
    # the two slow-path clusters
    assert len(clusters) == 3 * 2 * 2 + 2
    cluster = cluster_pb2.Cluster.FromString(clusters[res.cluster_name("grpc", ["10.0.0.2:8033", "10.0.0.1:8033"])])
    assert cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert cluster.type == cluster_pb2.Cluster.STATIC
    assert cluster.HasField("outlier_detection")
    hosts = [e.endpoint.address.socket_address for e in cluster.load_assignment.endpoints[0].lb_endpoints]
    assert [(h.address, h.port_value) for h in hosts] == [("10.0.0.1", 8033), ("10.0.0.2", 8033)]


def test_hostnames_use_dns_and_rest_uses_http1() -> None:
    body = res.build_cluster("c", ["http://pod-0.svc:8008"], protocol="rest", connect_timeout_s=0.5)
    cluster = cluster_pb2.Cluster.FromString(body)
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    options = hpo_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    assert options.explicit_http_config.WhichOneof("protocol_config") == "http_protocol_options"
    assert cluster.connect_timeout.ToMilliseconds() == 500


def test_listeners_carry_lua_then_router_and_the_route_source() -> None:
    for shards in (1, 8):
        listeners = res.build({}, {}, config(shards))[res.LISTENER]
        listener = listener_pb2.Listener.FromString(listeners["ms-grpc"])
        hcm = http_connection_manager_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
        assert [f.name for f in hcm.http_filters] == [res.LUA_FILTER, "envoy.filters.http.router"]
        assert hcm.HasField("rds") == (shards == 1)
        assert hcm.HasField("scoped_routes") == (shards > 1)
        assert listener.address.socket_address.address == "127.0.0.1"


@pytest.mark.parametrize("layout", ["table", "matcher"])
def test_sharded_routes_are_split_by_the_name_hash(layout: res.Layout) -> None:
    models = {f"m{i}": eps("a") for i in range(200)}
    out = res.build(models, {}, config(shards=8, layout=layout))
    scopes = [scoped_route_pb2.ScopedRouteConfiguration.FromString(b) for b in out[res.SCOPED_ROUTE].values()]
    keys = {s.key.fragments[0].string_key: s.route_configuration_name for s in scopes}
    shared = layout == "table"  # both listeners' scopes of a shard name its one table
    assert keys["grpc-3"] == ("ms-table-3" if shared else "ms-grpc-3") and keys["rest-slow"] == "ms-rest-slow"
    assert keys["rest-3"] == ("ms-table-3" if shared else "ms-rest-3")
    assert len(keys) == 2 * (8 + 1)
    for name in models:
        body = out[res.ROUTE][f"ms-{'table' if shared else 'grpc'}-{res.shard_of(name, 8)}"]
        config_ = route_pb2.RouteConfiguration.FromString(body)
        if layout == "matcher":
            assert name in config_.virtual_hosts[0].matcher.matcher_tree.exact_match_map.map
        else:
            assert name in table_routes(config_.virtual_hosts[0], "grpc")
    assert set(routes(out)) == set(models)


def test_a_change_rebuilds_only_its_shard_and_clusters_follow_use() -> None:
    builder = res.RouteBuilder(config(shards=16))
    models = {f"m{i}": eps("a") for i in range(100)}
    builder.replace(models, {})
    before = builder.resources()
    builder.replace({**models, "m7": eps("b")}, {})
    change = res.diff(before, builder.resources())
    shard = res.shard_of("m7", 16)
    assert change.changed[res.ROUTE] == {f"ms-table-{shard}"}  # one table, both listeners
    placed = {res.cluster_name("grpc", ["10.0.0.2:8033"]), res.cluster_name("rest", ["http://10.0.0.2:8008"])}
    assert change.changed[res.CLUSTER] == placed | {res.failover_cluster(c) for c in placed}
    assert res.CLUSTER not in change.removed
    after = builder.resources()
    builder.replace({k: v for k, v in models.items() if k != "m7"} | {"m7": eps("a")}, {})
    assert res.diff(after, builder.resources()).removed[res.CLUSTER] == set(change.changed[res.CLUSTER])
    assert res.diff(builder.resources(), builder.resources()).empty


TABLES = st.tuples(
    st.dictionaries(st.sampled_from([f"m{i}" for i in range(12)]), st.sampled_from(["", "a", "ab", "ba", "cd"]).map(eps)),
    st.dictionaries(st.sampled_from([f"v{i}" for i in range(6)] + ["m1"]), st.sampled_from([f"m{i}" for i in range(14)])),
)


def parsed(resources: res.Resources) -> dict[str, dict[str, Any]]:
    """The resources parsed; a table's lines sorted (their order is the order names came in)."""
    kinds = {res.CLUSTER: cluster_pb2.Cluster, res.LISTENER: listener_pb2.Listener, res.ROUTE: route_pb2.RouteConfiguration,
             res.SCOPED_ROUTE: scoped_route_pb2.ScopedRouteConfiguration}  # fmt: skip
    out = {t: {n: kinds[t].FromString(b) for n, b in named.items()} for t, named in resources.items()}
    for name, config in out[res.ROUTE].items():
        if name.startswith("ms-table"):
            fields = config.virtual_hosts[0].routes[0].metadata.filter_metadata[res.LUA_FILTER].fields
            fields["t"].string_value = "".join(sorted(fields["t"].string_value.splitlines(keepends=True)))
            fields["v"].string_value = ""
    return out


@settings(max_examples=150, deadline=None)
@given(tables=st.lists(TABLES, min_size=1, max_size=6), shards=st.sampled_from([1, 3]),
       layout=st.sampled_from(["table", "matcher"]))  # fmt: skip
def test_incremental_builds_equal_a_fresh_build(tables: list[Any], shards: int, layout: res.Layout) -> None:
    builder = res.RouteBuilder(config(shards, layout))
    for models, vmodels in tables:
        builder.replace(models, vmodels)
        fresh = res.build(models, vmodels, config(shards, layout))
        assert parsed(builder.resources()) == parsed(fresh)  # map order aside, the same config
        expected = {n: m for n in {*models, *vmodels} if models.get(m := vmodels.get(n, n))}
        assert {n: c[1] for n, c in routes(fresh).items()} == expected


def test_shard_hash_is_stable() -> None:
    # route.lua computes the same: (h * 31 + byte) mod 2^32, then mod shards
    assert res.shard_of("a", 7) == str(97 % 7)
    assert res.shard_of("ab", 1000) == str((97 * 31 + 98) % 1000)
    assert res.shard_of("anything", 1) == "0"


def test_a_pod_without_a_rest_address_is_routed_for_grpc_only() -> None:
    from meshserve.router.envoy import resources as res
    from meshserve.router.envoy.script import route_script
    from meshserve.router.table import Endpoint

    config = res.DataPathConfig(slow_grpc_address="127.0.0.1:1", slow_rest_address="http://127.0.0.1:2",
                                lua_source=route_script(1))
    builder = res.RouteBuilder(config)
    builder.change(models={"m": (Endpoint("p", "10.0.0.1:8001", ""),), "dead": (Endpoint("q", "nonsense", "x"),)})
    out = builder.resources()
    clusters = set(out[res.CLUSTER]) - {res.slow_cluster("grpc"), res.slow_cluster("rest")}
    placement = res.cluster_name("grpc", ("10.0.0.1:8001",))
    assert clusters == {placement, res.failover_cluster(placement)}


def test_a_model_whose_copies_limit_concurrency_stays_with_the_slow_path() -> None:
    """Endpoint.max_concurrency > 0: the Python router queues the copy's requests; Envoy would
    not, so the model gets no route (and no cluster) until its copies are unlimited again."""
    limited = tuple(Endpoint(e.pod_id, e.grpc_address, e.rest_address, 4) for e in eps("ab"))
    builder = res.RouteBuilder(config(shards=4))
    builder.change(models={"m1": limited, "m2": eps("ab")})
    out = builder.resources()
    assert set(routes(out)) == set(routes(out, "rest")) == {"m2"}
    builder.change(models={"m1": eps("ab"), "m2": limited})
    assert set(routes(builder.resources())) == {"m1"}
    builder.change(removed_models=["m1"])  # only a limited model left on {a, b}: no cluster for it
    assert set(builder.resources()[res.CLUSTER]) == {res.slow_cluster("grpc"), res.slow_cluster("rest")}


@pytest.mark.parametrize("layout", ["table", "matcher"])
@pytest.mark.parametrize("hedge", [2.5, 0.0])
def test_the_hedge_is_configured_per_data_path_and_zero_turns_it_off(layout: res.Layout, hedge: float) -> None:
    """MESHSERVE_ROUTER_ENVOY_HEDGE_AFTER_SECONDS reaches every model route (both layouts); 0: no
    per-try timeout and no hedge (a request slower than any bound runs once)."""
    import dataclasses

    cfg = dataclasses.replace(config(layout=layout), hedge_after_s=hedge)
    out = res.build({"m1": eps("ab")}, {}, cfg)
    model_routes = []
    for body in out[res.ROUTE].values():
        for host in route_pb2.RouteConfiguration.FromString(body).virtual_hosts:
            model_routes += [r for r in host.routes if r.route.HasField("retry_policy")]
            if host.HasField("matcher"):
                for entry in host.matcher.matcher_tree.exact_match_map.map.values():
                    route = route_components_pb2.Route()
                    entry.action.typed_config.Unpack(route)
                    model_routes.append(route)
    assert model_routes
    for route in model_routes:
        assert route.route.retry_policy.per_try_timeout.ToMilliseconds() == int(hedge * 1000)
        assert route.route.hedge_policy.hedge_on_per_try_timeout is (hedge > 0)
