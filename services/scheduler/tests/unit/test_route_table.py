"""route_table: a table kept from route log entries says what the state says.

The reference is a plain model of the state the Redis scripts change (registered models,
loaded copies, registered pods with their addresses and per-copy concurrency limits,
vmodels) and the entries those scripts log for each operation (routelog.py's kinds)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.scheduler.routing.table import RouteTable

MODELS = ["m1", "m2", "ü" * 70, "m/4", ""]
PODS = ["p1", "p2", "P3", "pod-" + "x" * 130, "pöd"]
Route = list[tuple[str, ...]]


@dataclass
class State:
    registered: set[str] = field(default_factory=set)
    copies: dict[str, set[str]] = field(default_factory=dict)
    pods: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    vmodels: dict[str, str] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)   # the pod hash's max_concurrency

    def endpoint(self, pod: str) -> tuple[str, ...]:
        limit = self.limits.get(pod, 0)
        return (*self.pods[pod], limit) if limit else self.pods[pod]

    def route(self, model: str) -> Route | None:
        if model not in self.registered:
            return None
        return [self.endpoint(p) for p in sorted(self.copies.get(model, ())) if p in self.pods]

    def table(self) -> RouteTable:
        """Loaded as RouteLog.load reads it: the copies of registered models only (an R
        entry carries the loaded copies of the model it registers)."""
        return RouteTable(
            models=[m.encode() for m in self.registered],
            loaded=[(m.encode(), p.encode()) for m, ps in self.copies.items() if m in self.registered for p in ps],
            pods=[(*e, self.limits.get(p, 0)) for p, e in self.pods.items()],
            vmodels=self.vmodels,
        )


def step(state: State, op: tuple[str, int, int, int]) -> list[bytes]:
    """Apply one operation as the scripts do; returns the entries they log (flat)."""
    return [x.encode() for x in _step(state, op)]


def _step(state: State, op: tuple[str, int, int, int]) -> list[str]:
    kind, i, j, k = op
    model, pod = MODELS[i % len(MODELS)], PODS[j % len(PODS)]
    if kind == "load":          # settle / adopt
        state.copies.setdefault(model, set()).add(pod)
        return ["+", model, pod]
    if kind == "unload":        # release of a loaded copy
        if pod not in state.copies.get(model, set()):
            return []
        state.copies[model].discard(pod)
        return ["-", model, pod]
    if kind == "pod-gone":      # remove_pod
        for held in state.copies.values():
            held.discard(pod)
        state.pods.pop(pod, None)
        state.limits.pop(pod, None)   # the pod's hash is deleted
        return ["P", pod, ""]
    if kind == "pod-limit":     # a heartbeat's max_concurrency (store/pod_keys.py `_POD_LIMIT`)
        limit = k % 3
        if pod not in state.pods or state.limits.get(pod, 0) == limit:
            return []
        if limit:
            state.limits[pod] = limit
        else:
            state.limits.pop(pod)
        return ["M", pod, str(limit)]
    if kind == "pod-up":        # upsert_pod with (maybe new) addresses
        # (a non-ASCII address: the A entry gives the gRPC address's length in bytes)
        grpc = f"hôst-{k}:8001" if k % 4 == 1 else f"10.0.0.{k}:8001"
        endpoint = (pod, grpc, "" if k % 3 == 0 else f"http://10.0.0.{k}:8002")
        if state.pods.get(pod) == endpoint:
            return []
        state.pods[pod] = endpoint
        return ["A", pod, f"{len(endpoint[1].encode())}:{endpoint[1]}{endpoint[2]}"]
    if kind == "register":      # add_model: R, then a + per loaded copy
        state.registered.add(model)
        return ["R", model, ""] + [x for p in sorted(state.copies.get(model, ())) for x in ("+", model, p)]
    if kind == "unregister":
        state.registered.discard(model)
        return ["U", model, ""]
    if kind == "vmodel":
        vmodel = f"v{k % 3}"
        state.vmodels[vmodel] = model
        return ["V", vmodel, model]
    vmodel = f"v{k % 3}"        # vmodel deleted
    state.vmodels.pop(vmodel, None)
    return ["X", vmodel, ""]


KINDS = ["load", "unload", "pod-gone", "pod-up", "pod-limit", "register", "unregister", "vmodel", "vmodel-gone"]
ops_st = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 9), st.integers(0, 9), st.integers(0, 9)), max_size=60
)


def routes_of(update: pb.RouteUpdate) -> dict[str, Route]:
    return {
        r.model_id: [
            (e.pod_id, e.grpc_address, e.rest_address, *((e.max_concurrency,) if e.max_concurrency else ()))
            for e in r.endpoints
        ]
        for r in update.routes
    }


def snapshot_of(state: State) -> pb.RouteUpdate:
    """The snapshot protobuf itself would build for `state`."""
    update = pb.RouteUpdate(snapshot=True, version=7)
    for model in sorted(state.registered):
        route = update.routes.add(model_id=model)
        for pid, grpc_address, rest_address, *limit in state.route(model) or []:
            route.endpoints.add(
                pod_id=pid, grpc_address=grpc_address, rest_address=rest_address, max_concurrency=int(*limit or [0])
            )
    for vmodel, model in sorted(state.vmodels.items()):
        update.vmodels.add(vmodel_id=vmodel, model_id=model)
    return update


@settings(max_examples=300, deadline=None)
@given(setup=ops_st, batches=st.lists(ops_st, min_size=1, max_size=4))
def test_applied_entries_keep_the_table_equal_to_the_state(
    setup: list[tuple[str, int, int, int]], batches: list[list[tuple[str, int, int, int]]]
) -> None:
    state = State()
    for op in setup:
        step(state, op)
    table = state.table()
    for n, batch in enumerate(batches, start=1):
        before = copy.deepcopy(state)
        flat = [x for op in batch for x in step(state, op)]
        changed = table.apply(flat)
        for model in MODELS:
            assert table.route(model) == state.route(model)
            if before.route(model) != state.route(model):
                assert model.encode() in changed.models
        assert table.vmodels == state.vmodels
        update = pb.RouteUpdate.FromString(table.changes(changed, version=n))
        assert update.version == n and not update.snapshot
        names = [m.decode() for m in changed.models]
        assert routes_of(update) == {m: state.route(m) for m in names if m in state.registered}
        assert sorted(update.removed_models) == sorted(m for m in names if m not in state.registered)
        assert {v.vmodel_id: v.model_id for v in update.vmodels} == {
            v: state.vmodels[v] for v in changed.vmodels if v in state.vmodels
        }
        assert set(update.removed_vmodels) == {v for v in changed.vmodels if v not in state.vmodels}
    # the snapshot: byte for byte what protobuf serialises
    assert table.snapshot(version=7) == snapshot_of(state).SerializeToString()


@settings(max_examples=300, deadline=None)
@given(ops=ops_st, data=st.data())
def test_a_table_loaded_late_and_replayed_from_an_earlier_position_ends_at_the_truth(
    ops: list[tuple[str, int, int, int]], data: st.DataObject
) -> None:
    """How a table is loaded without stopping writers: position k taken first, the state
    read at any later time j >= k, then every entry after k replayed on top."""
    state = State()
    entries: list[list[bytes]] = []
    states: list[State] = [copy.deepcopy(state)]
    for op in ops:
        entries.append(step(state, op))
        states.append(copy.deepcopy(state))
    k = data.draw(st.integers(0, len(ops)))
    j = data.draw(st.integers(k, len(ops)))
    table = states[j].table()
    table.apply([x for e in entries[k:] for x in e])
    for model in MODELS:
        assert table.route(model) == state.route(model)
    assert table.vmodels == state.vmodels
    assert table.snapshot(version=7) == snapshot_of(state).SerializeToString()


def test_an_unknown_entry_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown kind b'Q'"):
        RouteTable().apply([b"Q", b"a", b""])


def test_nothing_changed_encodes_an_empty_update() -> None:
    table = RouteTable(models=[b"m"], loaded=[(b"m", b"p")], pods=[("p", "g", "r")])
    changed = table.apply([])
    assert not changed
    assert pb.RouteUpdate.FromString(table.changes(changed, version=3)) == pb.RouteUpdate(version=3)


def test_a_pod_limit_reaches_its_routes_and_survives_new_addresses() -> None:
    table = RouteTable(models=[b"m"], loaded=[(b"m", b"p")], pods=[("p", "g", "r", 0)])
    changed = table.apply([b"M", b"p", b"4"])
    assert changed.models == {b"m": None}
    update = pb.RouteUpdate.FromString(table.changes(changed, version=1))
    assert update.routes[0].endpoints[0].max_concurrency == 4
    table.apply([b"A", b"p", b"2:g2r2"])            # addresses only: the limit stays
    assert table.route("m") == [("p", "g2", "r2", 4)]
    table.apply([b"M", b"p", b"0"])
    assert table.route("m") == [("p", "g2", "r2")]
