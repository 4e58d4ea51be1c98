"""The pure parts of Kubernetes mode's model-pressure autoscaler: which pod a scale-down removes
(`autoscale.pick_victim`), which runtimes are scaled and between what (`hpa.pressure_bounds`),
the replicas the reconciler writes so it never undoes the autoscaler (`hpa.pressure_replicas`,
`reconcile.plan_runtimes(pressure=True)`), and the scheduler's pressure JSON read back
(`kube_autoscale.parse_pressure`, checked against the scheduler's own response model)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserve.controller import deployments as deploy
from meshserve.controller import hpa
from meshserve.controller import reconcile as rc
from meshserve.controller.autoscale import PodLoad, pick_victim
from meshserve.controller.kube_autoscale import parse_pressure
from meshserve.controller.runtimes import parse_runtime
from meshserve.controller.serving_config import parse_config_yaml
from meshserve.controller.specs import DEPLOYMENT_MODE_ANNOTATION, parse_inference_service
from meshserve.controller.storage_config import StorageConfig

CLASS, MIN, MAX = hpa.AUTOSCALER_CLASS_ANNOTATION, hpa.MIN_SCALE_ANNOTATION, hpa.MAX_SCALE_ANNOTATION


def runtime(annotations: dict[str, str] | None = None, **spec: Any) -> Any:
    body: dict[str, Any] = {"multiModel": True, "supportedModelFormats": [{"name": "sklearn", "autoSelect": True}],
                            "containers": [{"name": "mlserver", "image": "x"}], **spec}
    meta: dict[str, Any] = {"name": "mlserver-1.x", "namespace": "ns", "annotations": annotations or {}}
    return parse_runtime({"kind": "ServingRuntime", "metadata": meta, "spec": body}, cluster_scoped=False)


# --- pick_victim -----------------------------------------------------------------------------------

def pod(pod_id: str, allocated: int = 0, copies: int = 0, draining: bool = False) -> PodLoad:
    return PodLoad(pod_id=pod_id, allocated_bytes=allocated, loaded_copies=copies, draining=draining)


@pytest.mark.parametrize(
    ("pods", "victim"),
    [
        pytest.param([], None, id="no-pod"),
        pytest.param([pod("a", 10)], "a", id="one-pod"),
        pytest.param([pod("a", 10), pod("b", 5)], "b", id="fewest-bytes"),
        pytest.param([pod("a", 5, 3), pod("b", 5, 1)], "b", id="equal-bytes-fewest-copies"),
        pytest.param([pod("a", 5, 1), pod("b", 5, 1)], "b", id="equal-pods-greatest-id"),
        pytest.param([pod("a", 0), pod("b", 900, 9, draining=True)], "b", id="a-draining-pod-first"),
        pytest.param([pod("ab", 0), pod("a", 0)], "ab", id="id-order-is-a-string-order"),
    ],
)
def test_pick_victim_table(pods: list[PodLoad], victim: str | None) -> None:
    assert pick_victim(pods) == victim


PODS = st.lists(
    st.builds(pod, st.text(alphabet="abc-0123", min_size=1, max_size=6), st.integers(0, 5), st.integers(0, 3), st.booleans()),
    max_size=8, unique_by=lambda p: p.pod_id,
)


@given(PODS)
def test_pick_victim_properties(pods: list[PodLoad]) -> None:
    victim = pick_victim(pods)
    if not pods:
        assert victim is None
        return
    chosen = next(p for p in pods if p.pod_id == victim)
    draining = [p for p in pods if p.draining]
    if draining:
        assert chosen.draining
    pool = draining or pods
    assert chosen.allocated_bytes == min(p.allocated_bytes for p in pool)
    ties = [p for p in pool if (p.allocated_bytes, p.loaded_copies) == (chosen.allocated_bytes, chosen.loaded_copies)]
    assert chosen.loaded_copies == min(p.loaded_copies for p in pool if p.allocated_bytes == chosen.allocated_bytes)
    assert chosen.pod_id == max(p.pod_id for p in ties)
    for order in itertools.islice(itertools.permutations(pods), 6):   # the input order never matters
        assert pick_victim(list(order)) == victim


# --- pressure_bounds / pressure_replicas -------------------------------------------------------------

@pytest.mark.parametrize(
    ("annotations", "planned", "bounds"),
    [
        pytest.param({}, 1, None, id="no-annotation-nothing-to-decide"),
        pytest.param({MIN: "1", MAX: "3"}, 1, (1, 3), id="min-max"),
        pytest.param({MAX: "4"}, 2, (2, 4), id="min-defaults-to-planned"),
        pytest.param({MIN: "2"}, 1, None, id="max-defaults-to-min-so-fixed"),
        pytest.param({MIN: "1", MAX: "3"}, 0, None, id="scaled-to-zero"),
        pytest.param({CLASS: "hpa", MIN: "1", MAX: "3"}, 1, None, id="an-hpa-owns-it"),
        pytest.param({CLASS: "other", MIN: "1", MAX: "3"}, 1, None, id="any-class-is-left-alone"),
        pytest.param({MIN: "x", MAX: "3"}, 1, None, id="bad-min"),
        pytest.param({MIN: "3", MAX: "2"}, 1, None, id="max-below-min"),
        pytest.param({MIN: "0", MAX: "2"}, 1, None, id="min-zero-refused"),
    ],
)
def test_pressure_bounds(annotations: dict[str, str], planned: int, bounds: tuple[int, int] | None) -> None:
    got = hpa.pressure_bounds(runtime(annotations), planned=planned)
    assert (None if got is None else (got.min_replicas, got.max_replicas)) == bounds


@pytest.mark.parametrize(
    ("annotations", "planned", "existing", "replicas"),
    [
        pytest.param({MIN: "1", MAX: "3"}, 1, None, 1, id="new-starts-at-min"),
        pytest.param({MIN: "2", MAX: "3"}, 1, None, 2, id="new-starts-at-min-above-planned"),
        pytest.param({MIN: "1", MAX: "3"}, 1, 3, 3, id="the-autoscalers-count-is-kept"),
        pytest.param({MIN: "1", MAX: "3"}, 1, 5, 3, id="clamped-to-max"),
        pytest.param({MIN: "2", MAX: "3"}, 1, 1, 2, id="clamped-to-min"),
        pytest.param({MIN: "1", MAX: "3"}, 1, 0, 1, id="from-zero-to-min"),
        pytest.param({MIN: "1", MAX: "3"}, 0, 3, 0, id="scale-to-zero-wins"),
        pytest.param({}, 2, 5, 2, id="no-annotation-planned"),
        pytest.param({CLASS: "hpa", MIN: "1", MAX: "3"}, 1, 3, 1, id="hpa-class-planned-here-the-hpa-plan-decides"),
        pytest.param({MIN: "x"}, 2, 3, 2, id="bad-annotation-planned"),
    ],
)
def test_pressure_replicas(annotations: dict[str, str], planned: int, existing: int | None, replicas: int) -> None:
    assert hpa.pressure_replicas(runtime(annotations), planned=planned, existing=existing) == replicas


@given(st.integers(1, 6), st.integers(0, 6), st.integers(0, 4), st.one_of(st.none(), st.integers(0, 12)))
def test_pressure_replicas_stay_within_the_bounds(low: int, extra: int, planned: int, existing: int | None) -> None:
    rt = runtime({MIN: str(low), MAX: str(low + extra)})
    got = hpa.pressure_replicas(rt, planned=planned, existing=existing)
    if planned == 0:
        assert got == 0
    else:
        assert low <= got <= low + extra
        if existing and low <= existing <= low + extra:
            assert got == existing


# --- the reconcile plan with pressure ----------------------------------------------------------------

CONFIG = parse_config_yaml("podsPerRuntime: 1\n").config
DEP = deploy.deployment_name(CONFIG, "mlserver-1.x")


def _isvc() -> Any:
    cr = parse_inference_service({
        "metadata": {"name": "m", "namespace": "ns", "annotations": {DEPLOYMENT_MODE_ANNOTATION: "ModelMesh"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p"}}},
    })
    assert cr is not None
    return cr


def _plan(rt: Any, observed: dict[str, rc.ObservedDeployment], *, pressure: bool, hpa_on: bool = True) -> rc.RuntimePlan:
    return rc.plan_runtimes(
        runtimes={rt.name: rt}, predictors=[_isvc()], observed=observed, records={}, config=CONFIG, namespace="ns",
        storage=StorageConfig(), scheduler_address="s:8034", now=0.0, hpa=hpa_on, pressure=pressure,
    )


def _hash(rt: Any) -> str:
    created = _plan(rt, {}, pressure=False).actions[0]
    assert created.manifest is not None
    return str(created.manifest["metadata"]["annotations"][deploy.SPEC_HASH_ANNOTATION])


def test_plan_with_pressure_keeps_the_autoscalers_replicas_and_without_it_scales_back() -> None:
    rt = runtime({MIN: "1", MAX: "3"})
    observed = {DEP: rc.ObservedDeployment(DEP, 3, _hash(rt))}
    assert _plan(rt, observed, pressure=True).actions == ()
    (scale,) = _plan(rt, observed, pressure=False).actions
    assert (scale.kind, scale.replicas) == (rc.ActionKind.SCALE, 1)


def test_plan_with_pressure_clamps_and_patches_with_the_kept_count() -> None:
    rt = runtime({MIN: "1", MAX: "2"})
    (scale,) = _plan(rt, {DEP: rc.ObservedDeployment(DEP, 3, _hash(rt))}, pressure=True).actions
    assert (scale.kind, scale.replicas) == (rc.ActionKind.SCALE, 2)    # max-scale lowered to 2
    (patch,) = _plan(rt, {DEP: rc.ObservedDeployment(DEP, 2, "old-hash")}, pressure=True).actions
    assert (patch.kind, patch.replicas) == (rc.ActionKind.PATCH, 2)
    assert patch.manifest is not None and patch.manifest["spec"]["replicas"] == 2   # a spec change keeps the count


def test_plan_with_pressure_leaves_an_hpa_runtime_to_the_hpa() -> None:
    rt = runtime({CLASS: "hpa", MIN: "1", MAX: "5"})
    observed = {DEP: rc.ObservedDeployment(DEP, 4, _hash(rt))}
    plan = _plan(rt, observed, pressure=True)
    assert plan.actions == () and plan.hpas[0].wanted      # the HPA's 4 kept, by the HPA rule


def test_plan_with_pressure_creates_at_min_scale() -> None:
    (create,) = _plan(runtime({MIN: "2", MAX: "4"}), {}, pressure=True).actions
    assert (create.kind, create.replicas) == (rc.ActionKind.CREATE, 2)


# --- the scheduler's pressure answer -----------------------------------------------------------------

def test_parse_pressure_reads_what_the_scheduler_writes() -> None:
    from meshserve.scheduler.api import PodPressureView, RuntimePressure

    answer = RuntimePressure(
        runtime="ns__mlserver-1.x", window_seconds=30.0, measured_at=dt.datetime.now(dt.UTC),
        pods=[
            PodPressureView(id="p-1", capacity_bytes=100, allocated_bytes=40, draining=False, loaded_copies=2,
                            lru_copy_age_seconds=3.0),
            PodPressureView(id="p-2", capacity_bytes=300, allocated_bytes=0, draining=True, loaded_copies=0,
                            lru_copy_age_seconds=None),
        ],
        capacity_bytes=100, allocated_bytes=40, evictions=2, evicted_bytes=50, evicted_bytes_per_minute=100.0,
        lru_copy_age_seconds=3.0,
    )
    body = answer.model_dump(mode="json", by_alias=True)
    got = parse_pressure(body, window_seconds=60.0)
    assert (got.window_seconds, got.evicted_bytes_per_minute, got.lru_copy_age_seconds) == (30.0, 100.0, 3.0)
    assert got.pods == (PodLoad("p-1", 40, 2, False), PodLoad("p-2", 0, 0, True))
    assert got.serving == 1 and got.pod_capacity_bytes == 100   # draining pods' capacity not counted
    empty = parse_pressure({"pods": [], "lruCopyAgeSeconds": None}, window_seconds=60.0)
    assert (empty.window_seconds, empty.pods, empty.lru_copy_age_seconds, empty.pod_capacity_bytes) == (60.0, (), None, 0)
