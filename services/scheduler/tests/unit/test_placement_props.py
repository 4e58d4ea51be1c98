"""Hypothesis properties of placement: the invariants written in placement.py's docstring.

* a pod never exceeds its capacity after applying a plan;
* a protected copy is never evicted; evictions are all on the chosen pod and minimal;
* the chosen pod is eligible, and no eviction happens while some eligible pod has room;
* the same input (in any pod order) gives the same plan;
* every failed plan has a non-empty reason and a known code.
Plus a RuleBasedStateMachine (register / load / use / evict / pod-lost / tick) that
applies plans to a model cluster and checks the invariants after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from meshserve.scheduler.models import (
    FAILURE_CODES,
    CopyState,
    CopyView,
    EvictionPolicy,
    PlacementConfig,
    PlacementRequest,
    Plan,
    PodView,
)
from meshserve.scheduler.placement.index import ClusterIndex, place_indexed
from meshserve.scheduler.placement.scan import is_protected, place

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = [f"m{i}" for i in range(12)]
LABELS = ["rt:a", "rt:b", "mt:x"]

copies_st = st.builds(
    CopyView,
    model_id=st.sampled_from(MODELS),
    size_bytes=st.integers(1, 60),
    state=st.sampled_from([CopyState.LOADED, CopyState.LOADED, CopyState.LOADING]),
    last_used=st.floats(0, 100),
    hits=st.floats(0, 50),
    in_flight=st.sampled_from([0, 0, 0, 1]),
    loaded_at=st.floats(0, 100),
    load_cost=st.floats(0.1, 10),
)


@st.composite
def pod_st(draw: st.DrawFn, pod_id: str) -> PodView:
    copies = draw(st.lists(copies_st, max_size=6, unique_by=lambda c: c.model_id))
    used = sum(c.size_bytes for c in copies) + draw(st.integers(0, 20))
    capacity = draw(st.integers(max(1, used - 30), used + 60))  # may start over capacity
    return PodView(
        pod_id,
        capacity,
        used,
        labels=frozenset(draw(st.lists(st.sampled_from(LABELS), max_size=3))),
        loading=draw(st.integers(0, 2)),
        max_loading=draw(st.integers(1, 2)),
        healthy=draw(st.booleans().map(lambda b: b or draw(st.booleans()))),
        draining=draw(st.sampled_from([False, False, False, True])),
        copies=tuple(copies),
    )


@st.composite
def cluster_st(draw: st.DrawFn) -> list[PodView]:
    n = draw(st.integers(0, 6))
    return [draw(pod_st(f"p{i}")) for i in range(n)]


request_st = st.builds(
    PlacementRequest,
    model_id=st.sampled_from([*MODELS, "new"]),
    size_bytes=st.integers(1, 120),
    required_labels=st.frozensets(st.sampled_from(LABELS), max_size=2),
    exclude_pods=st.frozensets(st.sampled_from([f"p{i}" for i in range(6)]), max_size=2),
)

config_st = st.builds(
    PlacementConfig,
    policy=st.sampled_from(list(EvictionPolicy)),
    min_residency_seconds=st.sampled_from([0.0, 10.0, 30.0]),
    min_copies=st.dictionaries(st.sampled_from(MODELS), st.integers(0, 2), max_size=4),
    usage_half_life_seconds=st.sampled_from([1.0, 60.0, 600.0]),
    eviction_candidates=st.sampled_from([1, 3, 16]),
    stale_after_intervals=st.sampled_from([0.0, 1.0, 6.0]),
    stale_min_seconds=st.sampled_from([0.0, 5.0, 60.0]),
)


def eligible(p: PodView, r: PlacementRequest) -> bool:
    return (
        p.healthy
        and not p.draining
        and r.required_labels <= p.labels
        and p.pod_id not in r.exclude_pods
        and all(c.model_id != r.model_id for c in p.copies)
        and p.capacity_bytes >= r.size_bytes
        and p.loading < p.max_loading
    )


def check_plan(plan: Plan, r: PlacementRequest, pods: list[PodView], *, now: float, cfg: PlacementConfig) -> None:
    """Every invariant of one plan against its input."""
    if not plan.ok:
        assert plan.reason.strip() and plan.code in FAILURE_CODES
        assert plan.evictions == ()
        return
    assert plan.reason.strip() and plan.code == ""
    chosen = next(p for p in pods if p.pod_id == plan.pod_id)
    assert eligible(chosen, r)
    assert chosen.allocated_bytes - plan.evicted_bytes + r.size_bytes <= chosen.capacity_bytes
    on_pod = {c.model_id: c for c in chosen.copies}
    assert len({e.model_id for e in plan.evictions}) == len(plan.evictions)
    for e in plan.evictions:
        assert e.pod_id == chosen.pod_id
        victim = on_pod[e.model_id]
        assert e.size_bytes == victim.size_bytes
        assert not is_protected(victim, now=now, config=cfg, pods=pods)
    if plan.evictions:
        # minimal: without the last victim the model would not fit
        last = plan.evictions[-1].size_bytes
        assert chosen.allocated_bytes - (plan.evicted_bytes - last) + r.size_bytes > chosen.capacity_bytes
        # no eviction while an eligible pod had room
        assert not any(eligible(p, r) and p.free_bytes >= r.size_bytes for p in pods)


@FAST
@given(pods=cluster_st(), r=request_st, cfg=config_st, now=st.floats(0, 200))
def test_every_plan_keeps_the_invariants(pods: list[PodView], r: PlacementRequest, cfg: PlacementConfig, now: float) -> None:
    check_plan(place(r, pods, now=now, config=cfg), r, pods, now=now, cfg=cfg)


@FAST
@given(pods=cluster_st(), r=request_st, cfg=config_st, now=st.floats(0, 200), data=st.data())
def test_same_input_same_plan_in_any_order(
    pods: list[PodView], r: PlacementRequest, cfg: PlacementConfig, now: float, data: st.DataObject
) -> None:
    first = place(r, pods, now=now, config=cfg)
    shuffled = data.draw(st.permutations(pods))
    rebuilt = [  # equal values, fresh objects (no cached indexes), copies reordered too
        PodView(p.pod_id, p.capacity_bytes, p.allocated_bytes, p.labels, p.loading, p.max_loading, p.healthy, p.draining, tuple(reversed(p.copies)))
        for p in shuffled
    ]
    assert place(r, rebuilt, now=now, config=cfg) == first
    assert place(r, pods, now=now, config=cfg) == first


@FAST
@given(pods=cluster_st(), model=st.sampled_from([*MODELS, "new"]), size=st.integers(1, 40), now=st.floats(0, 200))
def test_fits_without_eviction_means_best_fit(pods: list[PodView], model: str, size: int, now: float) -> None:
    r = PlacementRequest(model, size)
    fitting = [p for p in pods if eligible(p, r) and p.free_bytes >= r.size_bytes]
    plan = place(r, pods, now=now)
    if fitting:
        best = min(fitting, key=lambda p: (p.free_bytes - r.size_bytes, p.loading, p.pod_id))
        assert plan.pod_id == best.pod_id and plan.evictions == ()
    else:
        assert plan.evictions or not plan.ok


# ------------------------------------------------------------------ stateful cluster model


@dataclass
class SimPod:
    pod_id: str
    capacity: int
    labels: frozenset[str]
    copies: dict[str, CopyView] = field(default_factory=dict)

    @property
    def used(self) -> int:
        return sum(c.size_bytes for c in self.copies.values())

    def view(self) -> PodView:
        return PodView(self.pod_id, self.capacity, self.used, self.labels, max_loading=2, copies=tuple(self.copies.values()))


class ClusterMachine(RuleBasedStateMachine):
    """Register models, load them through `place()`, use, evict and lose pods."""

    models = Bundle("models")
    pod_loss = True

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.pods: dict[str, SimPod] = {}
        self.sizes: dict[str, int] = {}
        self.labels: dict[str, frozenset[str]] = {}
        self.min_copies: dict[str, int] = {}
        self.next_pod = 0
        self.last_plan: Plan | None = None
        self.policy = EvictionPolicy.USAGE_WEIGHTED
        self.ever_loaded: set[str] = set()
        self.lost_pods = 0
        self.index = ClusterIndex()   # kept across steps, updated incrementally

    def config(self) -> PlacementConfig:
        return PlacementConfig(policy=self.policy, min_residency_seconds=20.0, min_copies=dict(self.min_copies))

    def views(self) -> list[PodView]:
        return [p.view() for p in self.pods.values()]

    def count(self, model: str) -> int:
        return sum(model in p.copies for p in self.pods.values())

    @initialize(policy=st.sampled_from(list(EvictionPolicy)), n=st.integers(1, 3))
    def start(self, policy: EvictionPolicy, n: int) -> None:
        self.policy = policy
        for _ in range(n):
            self.add_pod(capacity=100, rt=True)

    @rule(capacity=st.integers(30, 150), rt=st.booleans())
    def add_pod(self, capacity: int, rt: bool) -> None:
        pid = f"p{self.next_pod}"
        self.next_pod += 1
        self.pods[pid] = SimPod(pid, capacity, frozenset({"rt:a"} if rt else {"rt:b"}))

    @rule(target=models, size=st.integers(5, 90), rt=st.booleans(), min_copies=st.sampled_from([0, 0, 1]))
    def register(self, size: int, rt: bool, min_copies: int) -> str:
        model = f"m{len(self.sizes)}"
        self.sizes[model] = size
        self.labels[model] = frozenset({"rt:a" if rt else "rt:b"})
        self.min_copies[model] = min_copies
        return model

    @rule(model=models)
    def load(self, model: str) -> None:
        views, cfg = self.views(), self.config()
        r = PlacementRequest(model, self.sizes[model], self.labels[model])
        plan = place(r, views, now=self.now, config=cfg)
        check_plan(plan, r, views, now=self.now, cfg=cfg)
        for gone in [pid for pid in (v.pod_id for v in self.index.views()) if pid not in self.pods]:
            self.index.remove(gone)
        for v in views:
            if self.index.get(v.pod_id) != v:
                self.index.update(v)
        assert place_indexed(r, self.index, now=self.now, config=cfg) == plan
        assert place(r, views, now=self.now, config=cfg) == plan
        self.last_plan = plan
        if plan.pod_id is None:
            return
        target = self.pods[plan.pod_id]
        for e in plan.evictions:
            del target.copies[e.model_id]
        target.copies[model] = CopyView(model, self.sizes[model], last_used=self.now, hits=1.0, loaded_at=self.now)
        self.ever_loaded.add(model)

    @rule(model=models, in_flight=st.integers(0, 1))
    def use(self, model: str, in_flight: int) -> None:
        for p in self.pods.values():
            c = p.copies.get(model)
            if c is not None:
                p.copies[model] = CopyView(model, c.size_bytes, last_used=self.now, hits=c.hits + 1, in_flight=in_flight, loaded_at=c.loaded_at)
                return

    @rule(model=models)
    def evict(self, model: str) -> None:
        """An explicit unload (admin or scale-down): never below min_copies."""
        holders = sorted(p.pod_id for p in self.pods.values() if model in p.copies)
        if holders and len(holders) > self.min_copies[model]:
            del self.pods[holders[-1]].copies[model]

    @precondition(lambda self: self.pod_loss and len(self.pods) > 1)
    @rule(data=st.data())
    def pod_lost(self, data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(sorted(self.pods)))
        del self.pods[victim]
        self.lost_pods += 1

    @rule(seconds=st.sampled_from([1.0, 5.0, 30.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def no_pod_over_capacity(self) -> None:
        for p in self.pods.values():
            assert p.used <= p.capacity, p

    @invariant()
    def every_plan_explains_itself(self) -> None:
        if self.last_plan is not None:
            assert self.last_plan.reason.strip()
            assert self.last_plan.ok or self.last_plan.code in FAILURE_CODES

    @invariant()
    def min_copies_models_keep_a_copy(self) -> None:
        if self.lost_pods:
            return   # a lost pod takes copies with it; the service re-places them
        for model in self.ever_loaded:
            if self.min_copies[model] >= 1:
                assert self.count(model) >= 1, model

    @invariant()
    def copies_within_bounds(self) -> None:
        for model in self.sizes:
            assert self.count(model) <= len(self.pods)   # at most one copy per pod


class NoPodLossMachine(ClusterMachine):
    """Same cluster without pod loss: a loaded min-copies model must keep a copy."""

    pod_loss = False


TestCluster = ClusterMachine.TestCase
TestCluster.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestNoPodLoss = NoPodLossMachine.TestCase
TestNoPodLoss.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
