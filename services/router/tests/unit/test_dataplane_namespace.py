"""A namespace's router (cluster-scope mode) looks every name a client sends up as
`<namespace>__<name>`: the same name in two namespaces reaches two different models, and a
name registered only outside the router's namespace is not found through it."""

from __future__ import annotations

import pytest

from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.router.dataplane import DataPlane
from meshserve.router.settings import RouterSettings
from meshserve.router.table import RoutingTable


def _plane(namespace: str) -> DataPlane:
    table = RoutingTable(fallback_seconds=30)
    table.apply(
        pb.RouteUpdate(
            snapshot=True,
            routes=[pb.Route(model_id=m) for m in ("a__m__isvc-1", "b__m__isvc-2", "plain")],
            vmodels=[pb.VModelRoute(vmodel_id="a__m", model_id="a__m__isvc-1"),
                     pb.VModelRoute(vmodel_id="b__m", model_id="b__m__isvc-2")],
        ),
        now=0,
    )
    return DataPlane(settings=RouterSettings(namespace=namespace), table=table, scheduler=None, clock=lambda: 1.0)  # type: ignore[arg-type]


def test_the_same_name_in_two_namespaces_reaches_each_namespaces_model() -> None:
    assert _plane("a").resolve("m") == "a__m__isvc-1"
    assert _plane("b").resolve("m") == "b__m__isvc-2"
    assert _plane("a").resolve(None, [("mm-vmodel-id", "m")]) == "a__m__isvc-1"
    assert _plane("b").resolve("m__isvc-2") == "b__m__isvc-2"


def test_the_vmodel_a_namespaced_request_named_is_its_namespaced_id() -> None:
    plane = _plane("a")
    assert plane.vmodel_named("m", (), "a__m__isvc-1") == "a__m"
    assert plane.vmodel_named("m__isvc-1", (), "a__m__isvc-1") is None


def test_a_name_outside_the_routers_namespace_is_never_what_it_asks_for() -> None:
    # an unknown name goes to the scheduler as the id it stands for (the scheduler answers
    # NOT_FOUND): never as a model of the default scope or of another namespace
    assert _plane("a").resolve("plain") == "a__plain"
    assert _plane("a").resolve("b__m") == "a__b__m"   # no reaching into another namespace by its prefix
    assert _plane("").resolve("plain") == "plain"


def test_a_namespace_that_is_not_a_dns_label_is_refused() -> None:
    for bad in ("A", "a_b", "-a", "a/b", "x" * 64):
        with pytest.raises(ValueError):
            RouterSettings(namespace=bad)
