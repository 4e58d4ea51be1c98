"""RoutingTable fed with real RouteUpdate protobufs; fallback routes checked against a
reference model of the rules over any sequence of snapshots, changes and time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.router.table import Endpoint, Fallbacks, RoutingTable


def _route(model_id: str, *pods: str) -> object:
    return pb.Route(
        model_id=model_id,
        endpoints=[pb.Endpoint(pod_id=p, grpc_address=f"{p}:1", rest_address=f"http://{p}:2") for p in pods],
    )


def _ep(pod: str) -> Endpoint:
    return Endpoint(pod, f"{pod}:1", f"http://{pod}:2")


def test_snapshot_replaces_everything_and_marks_synced() -> None:
    table = RoutingTable()  # no fallback
    assert not table.synced
    table.apply(pb.RouteUpdate(snapshot=True, version=3, routes=[_route("a", "p1")], vmodels=[pb.VModelRoute(vmodel_id="va", model_id="a")]), now=0)
    assert table.synced and table.version == 3
    assert table.endpoints("a", now=0) == (_ep("p1"),)
    table.apply(pb.RouteUpdate(snapshot=True, version=4, routes=[_route("b", "p2")]), now=1)
    assert table.endpoints("a", now=1) == () and table.resolve("va", now=1) == "va"
    assert table.endpoints("b", now=1)[0].pod_id == "p2"
    assert table.expire(now=1) == Fallbacks(0, 0, None)


def test_changes_add_and_remove_models_and_vmodels() -> None:
    table = RoutingTable()
    table.apply(pb.RouteUpdate(snapshot=True, version=1, routes=[_route("a", "p1", "p2")]), now=0)
    table.apply(pb.RouteUpdate(version=2, vmodels=[pb.VModelRoute(vmodel_id="v", model_id="a")]), now=0)
    assert table.resolve("v", now=0) == "a" and table.resolve("a", now=0) == "a"
    table.apply(pb.RouteUpdate(version=3, removed_models=["a"], removed_vmodels=["v"]), now=0)
    assert table.endpoints("a", now=0) == () and table.resolve("v", now=0) == "v"


def test_version_never_goes_back() -> None:
    table = RoutingTable()
    table.apply(pb.RouteUpdate(snapshot=True, version=5), now=0)
    table.apply(pb.RouteUpdate(version=2), now=0)
    assert table.version == 5


def test_drop_endpoint_keeps_the_other_copies() -> None:
    table = RoutingTable()
    e1, e2 = Endpoint("p1", "a:1", "http://a:2"), Endpoint("p2", "b:1", "http://b:2")
    table.set_endpoints("m", (e1, e2))
    table.drop_endpoint("m", "p1")
    assert table.endpoints("m", now=0) == (e2,)
    table.drop_endpoint("unknown", "p1")
    assert table.endpoints("unknown", now=0) == ()


# -- fallback routes ----------------------------------------------------------------------
def _restarted() -> RoutingTable:
    """A table that had a, b (vmodel v -> a), then got the empty snapshot of a restarted Redis at t=100."""
    table = RoutingTable(fallback_seconds=30)
    table.apply(pb.RouteUpdate(snapshot=True, version=9, routes=[_route("a", "p1"), _route("b", "p2")],
                               vmodels=[pb.VModelRoute(vmodel_id="v", model_id="a")]), now=0)
    table.apply(pb.RouteUpdate(snapshot=True, version=1), now=100)
    return table


def test_an_empty_snapshot_keeps_the_last_routes_until_they_expire() -> None:
    table = _restarted()
    assert table.lookup("a", now=100) == ((_ep("p1"),), True)
    assert table.resolve("v", now=129.9) == "a" and table.endpoints("a", now=129.9) == (_ep("p1"),)
    assert table.lookup("a", now=130) == ((), False) and table.resolve("v", now=130) == "v"
    assert table.expire(now=110) == Fallbacks(2, 1, 130)
    assert table.expire(now=130) == Fallbacks(0, 0, None)
    assert not table.fallback_models and not table.fallback_vmodels


def test_a_snapshot_that_lists_a_model_without_endpoints_keeps_its_fallback_and_its_expiry() -> None:
    """The registry mirror rebuilt before the pods reported: every model is listed, none has a copy."""
    table = _restarted()
    table.apply(pb.RouteUpdate(snapshot=True, version=1, routes=[_route("a"), _route("b")]), now=110)
    assert table.lookup("a", now=129) == ((_ep("p1"),), True)
    assert table.lookup("a", now=131) == ((), False)  # expiry from the first snapshot, not pushed on


def test_routes_that_come_back_replace_the_fallback() -> None:
    table = _restarted()
    table.apply(pb.RouteUpdate(version=2, routes=[_route("a", "p3")], vmodels=[pb.VModelRoute(vmodel_id="v", model_id="b")]), now=101)
    assert table.lookup("a", now=101) == ((_ep("p3"),), False)
    assert table.resolve("v", now=101) == "b"
    table.apply(pb.RouteUpdate(snapshot=True, version=1, routes=[_route("b", "p4")]), now=102)
    assert table.lookup("b", now=102) == ((_ep("p4"),), False)
    # what the later snapshot left out becomes a fallback in turn (a: p3), v with its new target
    assert table.lookup("a", now=102) == ((_ep("p3"),), True) and table.resolve("v", now=102) == "b"


def test_a_change_that_removes_a_route_clears_its_fallback() -> None:
    table = _restarted()
    table.apply(pb.RouteUpdate(version=2, routes=[_route("a")], removed_models=["b"], removed_vmodels=["v"]), now=101)
    assert table.lookup("a", now=101) == ((), False) and table.lookup("b", now=101) == ((), False)
    assert table.resolve("v", now=101) == "v"


def test_endpoints_from_the_scheduler_replace_the_fallback_and_a_failed_one_is_forgotten() -> None:
    table = _restarted()
    table.set_endpoints("a", (_ep("p5"),))
    assert table.lookup("a", now=101) == ((_ep("p5"),), False)
    table.drop_fallback("b")
    assert table.lookup("b", now=101) == ((), False)


def test_zero_seconds_keeps_nothing() -> None:
    table = RoutingTable(fallback_seconds=0)
    table.apply(pb.RouteUpdate(snapshot=True, routes=[_route("a", "p1")], vmodels=[pb.VModelRoute(vmodel_id="v", model_id="a")]), now=0)
    table.apply(pb.RouteUpdate(snapshot=True), now=0)
    assert table.lookup("a", now=0) == ((), False) and table.resolve("v", now=0) == "v"


# -- property: any sequence of snapshots, changes and time ----------------------------------
MODELS = ["a", "b", "c"]
PODS = ["p1", "p2"]
VMODELS = ["u", "v"]
GRACE = 10.0

pods_st = st.lists(st.sampled_from(PODS), unique=True, max_size=2)
update_st = st.tuples(
    st.booleans(),                                                               # snapshot
    st.dictionaries(st.sampled_from(MODELS), pods_st, max_size=3),               # routes
    st.lists(st.sampled_from(MODELS), unique=True, max_size=2),                  # removed models (changes)
    st.dictionaries(st.sampled_from(VMODELS), st.sampled_from(MODELS), max_size=2),  # vmodels
    st.lists(st.sampled_from(VMODELS), unique=True, max_size=2),                 # removed vmodels (changes)
)
step_st = st.one_of(
    st.tuples(st.just("update"), update_st),
    st.tuples(st.just("wait"), st.floats(min_value=0, max_value=8, allow_nan=False)),
    st.tuples(st.just("ensured"), st.tuples(st.sampled_from(MODELS), pods_st)),
    st.tuples(st.just("expire"), st.none()),
    st.tuples(st.just("gone"), st.tuples(st.sampled_from(MODELS), st.sampled_from(PODS))),
)


class Reference:
    """The rules of the table's docstring, written plainly: what was last heard of each
    model and vmodel, and when (time of the snapshot that left it out)."""

    def __init__(self) -> None:
        self.current: dict[str, tuple[str, ...]] = {}
        self.vcurrent: dict[str, str] = {}
        self.fallback: dict[str, tuple[tuple[str, ...], float]] = {}
        self.vfallback: dict[str, tuple[str, float]] = {}

    def snapshot(self, routes: dict[str, list[str]], vmodels: dict[str, str], now: float) -> None:
        for m, (_, until) in list(self.fallback.items()):
            if until <= now or routes.get(m):
                del self.fallback[m]
        for m, pods in self.current.items():
            if pods and not routes.get(m):
                self.fallback[m] = (pods, now + GRACE)
        for v, (_, until) in list(self.vfallback.items()):
            if until <= now or v in vmodels:
                del self.vfallback[v]
        for v, target in self.vcurrent.items():
            if v not in vmodels:
                self.vfallback[v] = (target, now + GRACE)
        self.current = {m: tuple(p) for m, p in routes.items()}
        self.vcurrent = dict(vmodels)

    def change(self, routes: dict[str, list[str]], removed: list[str], vmodels: dict[str, str], vremoved: list[str]) -> None:
        for m, pods in routes.items():
            self.current[m] = tuple(pods)
            self.fallback.pop(m, None)
        for m in removed:
            self.current.pop(m, None)
            self.fallback.pop(m, None)
        for v, target in vmodels.items():
            self.vcurrent[v] = target
            self.vfallback.pop(v, None)
        for v in vremoved:
            self.vcurrent.pop(v, None)
            self.vfallback.pop(v, None)

    def expected(self, m: str, now: float) -> tuple[tuple[str, ...], bool]:
        if self.current.get(m):
            return self.current[m], False
        if m in self.fallback and self.fallback[m][1] > now:
            return self.fallback[m][0], True
        return (), False


@settings(max_examples=500, deadline=None)
@given(steps=st.lists(step_st, max_size=25))
def test_lookup_is_the_current_route_else_an_unexpired_fallback_never_an_expired_one(steps: list[tuple[str, object]]) -> None:
    table, ref, now = RoutingTable(fallback_seconds=GRACE), Reference(), 0.0
    for kind, arg in steps:
        if kind == "wait":
            now += arg  # type: ignore[operator]
        elif kind == "expire":
            left = table.expire(now=now)
            assert left.next_expiry is None or left.next_expiry > now
        elif kind == "ensured":
            model, pods = arg  # type: ignore[misc]
            if pods:  # the data plane keeps only a non-empty answer
                table.set_endpoints(model, tuple(_ep(p) for p in pods))
                ref.current[model] = tuple(pods)
                ref.fallback.pop(model, None)
        elif kind == "gone":  # what the data plane does when a forward finds the copy gone
            model, pod = arg  # type: ignore[misc]
            if table.lookup(model, now=now)[1]:
                table.drop_fallback(model)
                del ref.fallback[model]
            else:
                table.drop_endpoint(model, pod)
                ref.current[model] = tuple(p for p in ref.current.get(model, ()) if p != pod)
        else:
            snapshot, routes, removed, vmodels, vremoved = arg  # type: ignore[misc]
            update = pb.RouteUpdate(
                snapshot=snapshot,
                routes=[_route(m, *pods) for m, pods in routes.items()],
                vmodels=[pb.VModelRoute(vmodel_id=v, model_id=m) for v, m in vmodels.items()],
                removed_models=[] if snapshot else removed,
                removed_vmodels=[] if snapshot else vremoved,
            )
            table.apply(update, now=now)
            if snapshot:
                ref.snapshot(routes, vmodels, now)
            else:
                ref.change(routes, removed, vmodels, vremoved)
        for m in MODELS:
            endpoints, fallback = table.lookup(m, now=now)
            pods = tuple(e.pod_id for e in endpoints)
            assert (pods, fallback) == ref.expected(m, now), (m, now)
            if fallback:  # a fallback is only ever used when there is no current route, and never expired
                assert not table.models.get(m) and table.fallback_models[m][1] > now
            if table.models.get(m):  # and none is kept beside a current route (to surface when it empties)
                assert m not in table.fallback_models
        for v in VMODELS:
            want = ref.vcurrent.get(v) or (ref.vfallback[v][0] if v in ref.vfallback and ref.vfallback[v][1] > now else v)
            assert table.resolve(v, now=now) == want
