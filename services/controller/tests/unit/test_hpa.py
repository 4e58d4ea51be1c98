"""hpa.py: upstream's HPA object, defaults, webhook validation and the Deployment replicas rule
(kserve/modelmesh-serving controllers/hpa, controllers/autoscaler, servingruntime_webhook.go)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserve.controller import hpa
from meshserve.controller.runtimes import parse_runtime

CLASS, MIN, MAX = hpa.AUTOSCALER_CLASS_ANNOTATION, hpa.MIN_SCALE_ANNOTATION, hpa.MAX_SCALE_ANNOTATION
METRIC, TARGET = hpa.METRICS_ANNOTATION, hpa.TARGET_UTILIZATION_ANNOTATION


def runtime(annotations: dict[str, str] | None = None, *, cluster: bool = False, **spec: Any) -> Any:
    body: dict[str, Any] = {"multiModel": True, "containers": [{"name": "mlserver", "image": "x"}], **spec}
    meta: dict[str, Any] = {"name": "mlserver-1.x", "annotations": annotations or {}}
    if not cluster:
        meta["namespace"] = "ns"
    return parse_runtime({"kind": "ServingRuntime", "metadata": meta, "spec": body}, cluster_scoped=cluster)


def build(annotations: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any] | None:
    return hpa.build_hpa(runtime(annotations), deployment_name="modelmesh-serving-mlserver-1.x", namespace="ns", **kwargs)


def test_no_class_no_hpa_and_other_annotations_ignored() -> None:
    assert build() is None
    assert build({MIN: "3", MAX: "1", METRIC: "gpu"}) is None   # ignored without the class (upstream docs)
    assert hpa.validate_autoscaling(runtime({MIN: "x"})) == []


def test_default_hpa_is_upstreams_object() -> None:
    obj = build({CLASS: "hpa"}, owner_uid="uid-1", labels={"team": "a"})
    assert obj == {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": "modelmesh-serving-mlserver-1.x",
            "namespace": "ns",
            "labels": {"team": "a", "serving.kserve.io/inferenceservice": "mlserver-1.x", "component": "predictor"},
            "annotations": {CLASS: "hpa"},
            "ownerReferences": [{
                "apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime", "name": "mlserver-1.x",
                "uid": "uid-1", "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "modelmesh-serving-mlserver-1.x"},
            "minReplicas": 1,
            "maxReplicas": 1,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
            "behavior": {},
        },
    }


def test_cluster_runtime_owns_its_hpa_and_no_uid_no_owner() -> None:
    rt = runtime({CLASS: "hpa"}, cluster=True)
    obj = hpa.build_hpa(rt, deployment_name="d", namespace="ns", owner_uid="u")
    assert obj is not None and obj["metadata"]["ownerReferences"][0]["kind"] == "ClusterServingRuntime"
    plain = build({CLASS: "hpa"})
    assert plain is not None and "ownerReferences" not in plain["metadata"]


@pytest.mark.parametrize(
    ("annotations", "min_r", "max_r", "metric", "target"),
    [
        pytest.param({}, 1, 1, "cpu", 80, id="defaults"),
        pytest.param({MAX: "2"}, 1, 2, "cpu", 80, id="max-only"),
        pytest.param({MIN: "2"}, 2, 2, "cpu", 80, id="min-only-raises-max"),
        pytest.param({MIN: "2", MAX: "3"}, 2, 3, "cpu", 80, id="both"),
        pytest.param({MIN: "2", MAX: "2"}, 2, 2, "cpu", 80, id="equal"),
        pytest.param({METRIC: "memory"}, 1, 1, "memory", 80, id="memory"),
        pytest.param({TARGET: "50"}, 1, 1, "cpu", 50, id="target"),
        pytest.param({TARGET: "1"}, 1, 1, "cpu", 1, id="target-low-edge"),
        pytest.param({TARGET: "100"}, 1, 1, "cpu", 100, id="target-high-edge"),
        pytest.param({TARGET: "+90", MIN: "+2", MAX: "4"}, 2, 4, "cpu", 90, id="plus-sign-as-atoi"),
        pytest.param({MIN: "2", MAX: "4", TARGET: "90", METRIC: "memory"}, 2, 4, "memory", 90, id="fvt-scale-up"),
    ],
)
def test_values(annotations: dict[str, str], min_r: int, max_r: int, metric: str, target: int) -> None:
    obj = build({CLASS: "hpa", **annotations})
    assert obj is not None
    assert (obj["spec"]["minReplicas"], obj["spec"]["maxReplicas"]) == (min_r, max_r)
    resource = obj["spec"]["metrics"][0]["resource"]
    assert (resource["name"], resource["target"]["averageUtilization"]) == (metric, target)


@pytest.mark.parametrize(
    ("annotations", "spec", "annotation", "fragment"),
    [
        pytest.param({CLASS: "kpa"}, {}, CLASS, "not a supported autoscaler class", id="unknown-class"),
        pytest.param({CLASS: "HPA"}, {}, CLASS, "not a supported autoscaler class", id="class-is-case-sensitive"),
        pytest.param({CLASS: "external"}, {}, CLASS, "not a supported autoscaler class", id="external"),
        pytest.param({CLASS: "hpa", METRIC: "gpu"}, {}, METRIC, "not a supported metric", id="bad-metric"),
        pytest.param({CLASS: "hpa", TARGET: "0"}, {}, TARGET, "from 1 to 100", id="target-zero"),
        pytest.param({CLASS: "hpa", TARGET: "101"}, {}, TARGET, "from 1 to 100", id="target-101"),
        pytest.param({CLASS: "hpa", TARGET: "7.5"}, {}, TARGET, "from 1 to 100", id="target-decimal"),
        pytest.param({TARGET: "abc"}, {}, TARGET, "from 1 to 100", id="target-checked-without-class"),
        pytest.param({CLASS: "hpa", MIN: "0"}, {}, MIN, "at least 1", id="min-zero"),
        pytest.param({CLASS: "hpa", MIN: "-1"}, {}, MIN, "at least 1", id="min-negative"),
        pytest.param({CLASS: "hpa", MIN: "one"}, {}, MIN, "at least 1", id="min-text"),
        pytest.param({CLASS: "hpa", MIN: " 2"}, {}, MIN, "at least 1", id="min-space"),
        pytest.param({CLASS: "hpa", MAX: "x"}, {}, MAX, "at least min-scale", id="max-text"),
        pytest.param({CLASS: "hpa", MIN: "3", MAX: "2"}, {}, MAX, "at least serving.kserve.io/min-scale (3)", id="max-below-min"),
        pytest.param({CLASS: "hpa", MAX: "99999999999"}, {}, MAX, "at least min-scale", id="max-over-int32"),
        pytest.param({CLASS: "hpa"}, {"replicas": 2}, CLASS, "spec.replicas", id="replicas-and-hpa"),
    ],
)
def test_invalid(annotations: dict[str, str], spec: dict[str, Any], annotation: str, fragment: str) -> None:
    rt = runtime(annotations, **spec)
    with pytest.raises(hpa.AutoscalingError) as err:
        hpa.build_hpa(rt, deployment_name="d", namespace="ns")
    assert err.value.annotation == annotation
    assert str(err.value).startswith(f"annotation {annotation} ")
    assert fragment in str(err.value)
    assert hpa.validate_autoscaling(rt) == [str(err.value)]


def test_differs_compares_metrics_min_and_max_only() -> None:
    a = build({CLASS: "hpa"})
    assert a is not None
    assert not hpa.hpa_differs(a, a)
    relabelled = {**a, "metadata": {"name": "other"}}
    assert not hpa.hpa_differs(a, relabelled)
    for extra in ({MIN: "2", MAX: "2"}, {MAX: "3"}, {TARGET: "60"}, {METRIC: "memory"}):
        b = build({CLASS: "hpa", **extra})
        assert b is not None and hpa.hpa_differs(b, a)


@pytest.mark.parametrize(
    ("planned", "existing", "expected"),
    [
        pytest.param(2, None, 3, id="new-deployment-gets-min"),
        pytest.param(2, 0, 3, id="deployment-at-zero-gets-min"),
        pytest.param(2, 5, 5, id="hpa-decision-kept"),
        pytest.param(2, 1, 1, id="kept-even-below-min-the-hpa-corrects-it"),
        pytest.param(0, 5, 0, id="scale-to-zero-wins"),
    ],
)
def test_deployment_replicas_with_hpa(planned: int, existing: int | None, expected: int) -> None:
    obj = build({CLASS: "hpa", MIN: "3", MAX: "6"})
    assert hpa.deployment_replicas(hpa=obj, planned=planned, existing=existing) == expected
    assert hpa.wants_hpa(hpa=obj, planned=planned) is (planned > 0)


def test_deployment_replicas_without_hpa_is_the_plan() -> None:
    for planned, existing in ((2, 5), (0, 1), (1, None)):
        assert hpa.deployment_replicas(hpa=None, planned=planned, existing=existing) == planned
        assert not hpa.wants_hpa(hpa=None, planned=planned)


@pytest.mark.parametrize(
    ("annotations", "default", "expected"),
    [
        pytest.param({}, 2, (2, 2), id="replicas-when-absent"),
        pytest.param({MIN: "1", MAX: "2"}, 1, (1, 2), id="both"),
        pytest.param({MIN: "1"}, 2, (1, 2), id="min-only-max-is-replicas"),
        pytest.param({MAX: "4"}, 2, (2, 4), id="max-only-min-is-replicas"),
        pytest.param({MIN: "3"}, 2, (3, 3), id="min-over-replicas"),
        pytest.param({}, 0, (1, 1), id="never-below-one"),
    ],
)
def test_scale_bounds(annotations: dict[str, str], default: int, expected: tuple[int, int]) -> None:
    b = hpa.scale_bounds(runtime(annotations), default_replicas=default)
    assert (b.min_replicas, b.max_replicas) == expected


def test_scale_bounds_rejects_max_below_replicas_default_min() -> None:
    with pytest.raises(hpa.AutoscalingError, match="max-scale"):
        hpa.scale_bounds(runtime({MAX: "1"}), default_replicas=2)


@given(
    low=st.one_of(st.none(), st.integers(-3, 8).map(str), st.text(max_size=3)),
    high=st.one_of(st.none(), st.integers(-3, 8).map(str), st.text(max_size=3)),
    n=st.integers(-5, 20),
)
def test_bounds_are_ordered_and_clamp_stays_inside(low: str | None, high: str | None, n: int) -> None:
    annotations = {CLASS: "hpa", **({MIN: low} if low is not None else {}), **({MAX: high} if high is not None else {})}
    try:
        obj = build(annotations)
    except hpa.AutoscalingError as err:
        assert err.annotation in (MIN, MAX)
        return
    assert obj is not None
    low_r, high_r = obj["spec"]["minReplicas"], obj["spec"]["maxReplicas"]
    assert 1 <= low_r <= high_r
    bounds = hpa.ScaleBounds(low_r, high_r)
    assert low_r <= bounds.clamp(n) <= high_r
