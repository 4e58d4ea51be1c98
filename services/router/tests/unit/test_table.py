"""RoutingTable fed with real RouteUpdate protobufs."""

from __future__ import annotations

from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.router.table import Endpoint, RoutingTable


def _route(model_id: str, *pods: str) -> object:
    return pb.Route(
        model_id=model_id,
        endpoints=[pb.Endpoint(pod_id=p, grpc_address=f"{p}:1", rest_address=f"http://{p}:2") for p in pods],
    )


def test_snapshot_replaces_everything_and_marks_synced() -> None:
    table = RoutingTable()
    assert not table.synced
    table.apply(pb.RouteUpdate(snapshot=True, version=3, routes=[_route("a", "p1")], vmodels=[pb.VModelRoute(vmodel_id="va", model_id="a")]))
    assert table.synced and table.version == 3
    assert table.endpoints("a") == (Endpoint("p1", "p1:1", "http://p1:2"),)
    table.apply(pb.RouteUpdate(snapshot=True, version=4, routes=[_route("b", "p2")]))
    assert table.endpoints("a") == () and table.resolve("va") == "va"
    assert table.endpoints("b")[0].pod_id == "p2"


def test_changes_add_and_remove_models_and_vmodels() -> None:
    table = RoutingTable()
    table.apply(pb.RouteUpdate(snapshot=True, version=1, routes=[_route("a", "p1", "p2")]))
    table.apply(pb.RouteUpdate(version=2, vmodels=[pb.VModelRoute(vmodel_id="v", model_id="a")]))
    assert table.resolve("v") == "a" and table.resolve("a") == "a"
    table.apply(pb.RouteUpdate(version=3, removed_models=["a"], removed_vmodels=["v"]))
    assert table.endpoints("a") == () and table.resolve("v") == "v"


def test_version_never_goes_back() -> None:
    table = RoutingTable()
    table.apply(pb.RouteUpdate(snapshot=True, version=5))
    table.apply(pb.RouteUpdate(version=2))
    assert table.version == 5


def test_drop_endpoint_keeps_the_other_copies() -> None:
    table = RoutingTable()
    e1, e2 = Endpoint("p1", "a:1", "http://a:2"), Endpoint("p2", "b:1", "http://b:2")
    table.set_endpoints("m", (e1, e2))
    table.drop_endpoint("m", "p1")
    assert table.endpoints("m") == (e2,)
    table.drop_endpoint("unknown", "p1")
    assert table.endpoints("unknown") == ()
