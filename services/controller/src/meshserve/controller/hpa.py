"""Upstream's HorizontalPodAutoscaler for runtime Deployments (`controllers/hpa`,
`controllers/autoscaler` and the ServingRuntime webhook of kserve/modelmesh-serving).

Pure. Owns:
* the annotations of a ServingRuntime / ClusterServingRuntime that ask for an HPA:
  `serving.kserve.io/autoscalerClass: hpa` turns it on; `serving.kserve.io/min-scale`
  (default 1), `serving.kserve.io/max-scale` (default: min-scale),
  `serving.kserve.io/metrics` (`cpu` (default) or `memory`) and
  `serving.kserve.io/targetUtilizationPercentage` (default 80). Without the class the other
  annotations are ignored (upstream's docs), except that a bad target utilization is an
  error whatever the class (upstream's webhook checks it first);
* `validate_autoscaling`: upstream's webhook rules, each message naming its annotation (the
  controller turns them into an Event on the runtime): the class must be `hpa`; the metric
  `cpu` or `memory`; the target a [1-100] integer; min-scale an integer >= 1; max-scale an
  integer >= min-scale; and `spec.replicas` may not be set together with the HPA;
* `build_hpa`: the `autoscaling/v2` object upstream's `createHPA` writes (named like the
  Deployment, in its namespace, the runtime's annotations, labels
  `serving.kserve.io/inferenceservice: <runtime>` and `component: predictor`, one Resource
  metric with an Utilization target, an empty `behavior`, the runtime as controller owner),
  or None when the runtime asks for none (the caller then deletes an HPA left from before);
* `hpa_differs`: upstream's `semanticHPAEquals` (metrics, min and max replicas), when an
  existing HPA must be updated;
* `deployment_replicas`: what the Deployment's `replicas` becomes while an HPA owns it: the
  planned value when the runtime is scaled to zero (upstream then deletes the HPA), the HPA's
  minReplicas when the Deployment is new or at 0, else the Deployment's current value (the
  HPA's decision is never overwritten);
* `scale_bounds`: a runtime's [min, max] pod count from the same min-scale / max-scale
  annotations, with the planned replicas where one is absent (what the local model-pressure
  autoscaler, `autoscale.py`, keeps the runtime between);
* the model-pressure autoscaler in Kubernetes mode (`kube_autoscale`): `pressure_bounds`,
  the bounds it keeps a runtime between, or None for a runtime it leaves alone (an autoscaler
  class: an HPA owns its replicas; a bad annotation; min-scale = max-scale: nothing to
  decide), and `pressure_replicas`, what the reconciler writes as the Deployment's `replicas`
  so that it never undoes the autoscaler (the Deployment's current value clamped to the
  bounds; the minimum for a new Deployment or one at 0; 0 when planned at 0).

One deliberate difference: upstream's webhook defaults max-scale to 1 when validating (so
`min-scale: 2` alone is refused) while its reconciler raises max to min; with no webhook
here, the reconciler's rule is the one kept (`min-scale: 2` alone means 2..2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshserve.controller.runtimes import Runtime

AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
MIN_SCALE_ANNOTATION = "serving.kserve.io/min-scale"
MAX_SCALE_ANNOTATION = "serving.kserve.io/max-scale"
METRICS_ANNOTATION = "serving.kserve.io/metrics"
TARGET_UTILIZATION_ANNOTATION = "serving.kserve.io/targetUtilizationPercentage"
HPA_CLASS = "hpa"
ALLOWED_CLASSES = (HPA_CLASS,)
ALLOWED_METRICS = ("cpu", "memory")
DEFAULT_MIN_REPLICAS = 1
DEFAULT_UTILIZATION = 80
INFERENCE_SERVICE_LABEL = "serving.kserve.io/inferenceservice"
COMPONENT_LABEL = "component"
PREDICTOR_COMPONENT = "predictor"
MAX_REPLICAS_LIMIT = 2**31 - 1
"""An HPA's replica fields are int32."""
_INT = re.compile(r"^[+-]?[0-9]+$")
"""What Go's strconv.Atoi takes (no spaces, no underscores, no decimals)."""


class AutoscalingError(ValueError):
    """An autoscaling annotation the controller cannot follow; `str()` names the annotation."""

    def __init__(self, annotation: str, message: str) -> None:
        super().__init__(f"annotation {annotation} {message}")
        self.annotation = annotation


@dataclass(frozen=True)
class ScaleBounds:
    min_replicas: int
    max_replicas: int

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class HpaSpec:
    """What a runtime's annotations ask of its HPA."""

    bounds: ScaleBounds
    metric: str = "cpu"
    target_utilization: int = DEFAULT_UTILIZATION


def _annotations(runtime: Runtime) -> dict[str, str]:
    return dict(runtime.annotations)


def _int(annotations: Mapping[str, str], key: str, *, what: str) -> int | None:
    value = annotations.get(key)
    if value is None:
        return None
    if not _INT.match(value) or abs(int(value)) > MAX_REPLICAS_LIMIT:
        raise AutoscalingError(key, f"{value!r} must be {what}")
    return int(value)


def autoscaler_class(runtime: Runtime) -> str | None:
    """The runtime's autoscaler class (None: no annotation, upstream's class `none`)."""
    return _annotations(runtime).get(AUTOSCALER_CLASS_ANNOTATION)


def _target(annotations: Mapping[str, str]) -> int:
    target = _int(annotations, TARGET_UTILIZATION_ANNOTATION, what="an integer from 1 to 100")
    if target is None:
        return DEFAULT_UTILIZATION
    if not 1 <= target <= 100:
        raise AutoscalingError(TARGET_UTILIZATION_ANNOTATION, f"'{target}' must be an integer from 1 to 100")
    return target


def _bounds(annotations: Mapping[str, str], *, default: int) -> ScaleBounds:
    low = _int(annotations, MIN_SCALE_ANNOTATION, what="an integer of at least 1")
    if low is not None and low < 1:
        raise AutoscalingError(MIN_SCALE_ANNOTATION, f"'{low}' must be an integer of at least 1")
    high = _int(annotations, MAX_SCALE_ANNOTATION, what="an integer of at least min-scale")
    low = default if low is None else low
    if high is None:
        high = max(low, default)
    elif high < low:
        raise AutoscalingError(
            MAX_SCALE_ANNOTATION, f"'{high}' must be at least {MIN_SCALE_ANNOTATION} ({low})"
        )
    return ScaleBounds(min_replicas=low, max_replicas=high)


def parse_hpa(runtime: Runtime) -> HpaSpec | None:
    """The HPA the runtime asks for, None without the class annotation; raises
    `AutoscalingError` (the first problem) for annotations upstream's webhook refuses."""
    annotations = _annotations(runtime)
    target = _target(annotations)   # checked whatever the class, as upstream's webhook does
    cls = annotations.get(AUTOSCALER_CLASS_ANNOTATION)
    if cls is None:
        return None
    if cls not in ALLOWED_CLASSES:
        raise AutoscalingError(
            AUTOSCALER_CLASS_ANNOTATION, f"{cls!r} is not a supported autoscaler class (supported: {', '.join(ALLOWED_CLASSES)})"
        )
    metric = annotations.get(METRICS_ANNOTATION, "cpu")
    if metric not in ALLOWED_METRICS:
        raise AutoscalingError(METRICS_ANNOTATION, f"{metric!r} is not a supported metric (supported: {', '.join(ALLOWED_METRICS)})")
    if runtime.replicas is not None:
        raise AutoscalingError(
            AUTOSCALER_CLASS_ANNOTATION,
            f"'{cls}' cannot be used together with spec.replicas ({runtime.replicas}): remove one of them",
        )
    bounds = _bounds(annotations, default=DEFAULT_MIN_REPLICAS)
    return HpaSpec(bounds=bounds, metric=metric, target_utilization=target)


def validate_autoscaling(runtime: Runtime) -> list[str]:
    """Problems with the runtime's autoscaling annotations (empty when valid or absent)."""
    try:
        parse_hpa(runtime)
    except AutoscalingError as err:
        return [str(err)]
    return []


def build_hpa(
    runtime: Runtime, *, deployment_name: str, namespace: str, owner_uid: str = "",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """The runtime's `autoscaling/v2` HorizontalPodAutoscaler, or None when it asks for none.

    Args:
        deployment_name: the runtime's Deployment (`<inferenceServiceName>-<runtime>`), which
            is also the HPA's name and its scale target.
        owner_uid: the runtime object's uid; when given the runtime becomes the HPA's
            controller owner (deleting the runtime deletes its HPA).
        labels: the runtime object's own metadata labels (upstream copies them).

    Raises:
        AutoscalingError: see `parse_hpa`.
    """
    spec = parse_hpa(runtime)
    if spec is None:
        return None
    metadata: dict[str, Any] = {
        "name": deployment_name,
        "namespace": namespace,
        "labels": {
            **{str(k): str(v) for k, v in (labels or {}).items()},
            INFERENCE_SERVICE_LABEL: runtime.name,
            COMPONENT_LABEL: PREDICTOR_COMPONENT,
        },
        "annotations": dict(runtime.annotations),
    }
    if owner_uid:
        metadata["ownerReferences"] = [{
            "apiVersion": "serving.kserve.io/v1alpha1", "kind": runtime.kind, "name": runtime.name,
            "uid": owner_uid, "controller": True, "blockOwnerDeletion": True,
        }]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name},
            "minReplicas": spec.bounds.min_replicas,
            "maxReplicas": spec.bounds.max_replicas,
            "metrics": [{
                "type": "Resource",
                "resource": {
                    "name": spec.metric,
                    "target": {"type": "Utilization", "averageUtilization": spec.target_utilization},
                },
            }],
            "behavior": {},
        },
    }


def hpa_differs(desired: Mapping[str, Any], existing: Mapping[str, Any]) -> bool:
    """True when `existing` must be updated to `desired` (upstream compares metrics, min and max)."""
    want, have = desired.get("spec") or {}, existing.get("spec") or {}
    return any(want.get(k) != have.get(k) for k in ("metrics", "minReplicas", "maxReplicas"))


def deployment_replicas(*, hpa: Mapping[str, Any] | None, planned: int, existing: int | None) -> int:
    """The runtime Deployment's `replicas` to write (see the module docstring).

    Args:
        hpa: `build_hpa`'s object (None: no HPA, the planned value is written).
        planned: the reconciler's replicas (spec.replicas / podsPerRuntime, 0 when scaled to zero).
        existing: the Deployment's current `spec.replicas` (None when it does not exist yet).
    """
    if hpa is None or planned == 0:
        return planned
    if not existing:
        return int(hpa["spec"]["minReplicas"])
    return existing


def wants_hpa(*, hpa: Mapping[str, Any] | None, planned: int) -> bool:
    """Whether the HPA must exist (else: delete it if present): upstream deletes it when the
    runtime is scaled to zero or has no autoscaler class."""
    return hpa is not None and planned > 0


def scale_bounds(runtime: Runtime, *, default_replicas: int) -> ScaleBounds:
    """The runtime's [min, max] pods from min-scale / max-scale, `default_replicas` (the
    planned replicas) for a missing one; raises `AutoscalingError` for a bad value."""
    return _bounds(_annotations(runtime), default=max(1, default_replicas))


def pressure_bounds(runtime: Runtime, *, planned: int) -> ScaleBounds | None:
    """The bounds the model-pressure autoscaler keeps `runtime` between (see the module
    docstring), None when it does not scale it; `planned`: the reconciler's replicas."""
    if planned <= 0 or autoscaler_class(runtime) is not None:
        return None
    try:
        bounds = scale_bounds(runtime, default_replicas=planned)
    except AutoscalingError:
        return None
    return bounds if bounds.min_replicas < bounds.max_replicas else None


def pressure_replicas(runtime: Runtime, *, planned: int, existing: int | None) -> int:
    """The Deployment's `replicas` while the model-pressure autoscaler may own it.

    Args:
        planned: the reconciler's replicas (0: scaled to zero, kept).
        existing: the Deployment's current `spec.replicas` (None: it does not exist yet).
    """
    if planned <= 0 or autoscaler_class(runtime) is not None:
        return planned
    try:
        bounds = scale_bounds(runtime, default_replicas=planned)
    except AutoscalingError:
        return planned
    return bounds.clamp(existing) if existing else bounds.min_replicas
