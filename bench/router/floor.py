"""The floor row of `bench.router`: a bare Envoy in front of a target, nothing of ours in it.

The same binary, worker count, flags and listener settings (codec AUTO, the per-connection
buffer limit) as the router's Envoy (meshserve.router.envoy), but a static bootstrap: one
route to the target's cluster, the router filter only (no Lua, no scoped routes, no
failover aggregate, no access log). What it adds over a direct call is Envoy's own cost on
this host: if it alone misses a target, no route.lua or control plane can meet it here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import meshserve.router.envoy  # noqa: F401  (puts the xds-protos modules on the path)
from meshserve.router.envoy.process import envoy_binary
from meshserve.router.envoy.resources import host_port

MAX_BODY_BYTES = (64 << 20) + (1 << 20)  # as the router configures it: max message + 1 MiB


def _listener(name: str, port: int, cluster: str) -> dict[str, object]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "name": name,
            "virtual_hosts": [{
                "name": name, "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}],
            }],
        },
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    }  # fmt: skip
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "per_connection_buffer_limit_bytes": MAX_BODY_BYTES,
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def _cluster(name: str, address: str, *, http2: bool) -> dict[str, object]:
    host, port = host_port(address)
    protocol = {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
    return {
        "name": name,
        "type": "STATIC",
        "lb_policy": "LEAST_REQUEST",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": protocol,
            }
        },
    }


def bootstrap(grpc_port: int, rest_port: int, grpc_target: str, rest_target: str) -> str:
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [_listener("floor_grpc", grpc_port, "target_grpc"), _listener("floor_rest", rest_port, "target_rest")],
            "clusters": [_cluster("target_grpc", grpc_target, http2=True), _cluster("target_rest", rest_target, http2=False)],
        },
    }
    return json.dumps(config)


def start(
    workdir: Path, *, grpc_port: int, rest_port: int, grpc_target: str, rest_target: str, prefix: list[str]
) -> subprocess.Popen[bytes]:
    """Envoy with the floor bootstrap; `prefix`: e.g. taskset arguments."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "floor.json"
    config.write_text(bootstrap(grpc_port, rest_port, grpc_target, rest_target))
    log = (workdir / "floor.log").open("ab")
    return subprocess.Popen(
        [*prefix, str(envoy_binary()), "-c", str(config), "--concurrency", "1", "-l", "warning",
         "--disable-hot-restart", "--drain-time-s", "1"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
