"""Reconcile as pure functions: desired CRs + observed state -> actions.

Two planners, both without I/O and with `now` passed in:

* `plan_runtimes`: which runtime Deployments must exist, with how many replicas, including the
  scale-to-zero timers of upstream's `servingruntime_controller.go` (facts §5):
  - replicas = `spec.replicas` if set, else `podsPerRuntime`;
  - a runtime is *in use* when some valid, not-deleting predictor is supported by it;
  - with scale-to-zero on, an unused runtime keeps its replicas for `gracePeriodSeconds` after it
    became unused, then goes to 0; if it is used again within the grace period the timer clears;
  - on the first reconcile of a runtime (no record yet) an unused runtime goes to 0 at once;
  - disabled, non-multiModel or invalid runtimes have their Deployment deleted;
  - with `hpa` (Kubernetes mode), a runtime annotated `serving.kserve.io/autoscalerClass: hpa`
    gets an `HpaPlan` with the HorizontalPodAutoscaler `hpa.build_hpa` builds, and its
    Deployment's replicas follow `hpa.deployment_replicas`: the HPA's decision (the
    Deployment's current replicas) is never scaled back. An autoscaling annotation that
    cannot be followed is an `HpaPlan.error` (no HPA change, and a Deployment that runs keeps
    its replicas, so a left HPA is not fought either).
* `plan_predictor`: the scheduler call for one CR (set vmodel / delete vmodel / only read status)
  and whether no runtime can serve it.

Invariants (checked by the hypothesis tests): a Deployment is never both created and deleted in
one plan; an in-use eligible runtime is never planned at 0 replicas; every action names a runtime
that exists in the input or a Deployment that exists in `observed`; `requeue_after`, when set, is
positive and no longer than the grace period.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshserve.controller import deployments as deploy
from meshserve.controller import hpa as autoscaling
from meshserve.controller.internal_tls import InternalTls
from meshserve.controller.runtimes import (
    Runtime,
    SelectionFailure,
    is_eligible,
    select_runtime,
    validate_runtime,
)
from meshserve.controller.scope import pinned_runtime
from meshserve.controller.serving_config import ServingConfig
from meshserve.controller.specs import PredictorCR
from meshserve.controller.storage_config import StorageConfig


@dataclass(frozen=True)
class ObservedDeployment:
    name: str
    replicas: int
    spec_hash: str
    managed: bool = True
    """False when the Deployment exists but was not created by us (never touched)."""


@dataclass(frozen=True)
class RuntimeRecord:
    """What the controller remembers per runtime between reconciles (upstream keeps the same)."""

    in_use: bool
    unused_since: float | None = None


class ActionKind(enum.StrEnum):
    CREATE = "create"
    PATCH = "patch"     # spec changed (and maybe replicas)
    SCALE = "scale"     # replicas only
    DELETE = "delete"


@dataclass(frozen=True)
class DeploymentAction:
    kind: ActionKind
    name: str
    runtime: str
    replicas: int = 0
    manifest: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    reason: str = ""


@dataclass(frozen=True)
class HpaPlan:
    """What becomes of the HorizontalPodAutoscaler of one eligible runtime (Kubernetes mode)."""

    name: str
    """The HPA's name: the runtime's Deployment's."""
    runtime: str
    desired: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """`hpa.build_hpa`'s object (None: the runtime asks for none, or `error`)."""
    wanted: bool = False
    """True: create or update it as `desired`; False: delete an HPA of this runtime left from
    before (unless `error`)."""
    error: str = ""
    """An autoscaling annotation the controller cannot follow (for an Event); nothing is changed."""


@dataclass(frozen=True)
class RuntimePlan:
    actions: tuple[DeploymentAction, ...]
    records: Mapping[str, RuntimeRecord]
    requeue_after: float | None = None
    invalid: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """runtime name -> validation errors (for Events/logs)."""
    hpas: tuple[HpaPlan, ...] = ()
    """One per eligible runtime when planned with `hpa` (none otherwise)."""


def runtimes_in_use(
    predictors: Iterable[PredictorCR], runtimes: Mapping[str, Runtime], *, config: ServingConfig, pin: bool = False
) -> frozenset[str]:
    """Runtimes some valid, not-deleting predictor may be placed on: every supporting one, or
    with `pin` (cluster scope) only the one it is pinned to (`scope.pinned_runtime`)."""
    used: set[str] = set()
    for p in predictors:
        if p.spec is None or p.deleting:
            continue
        selection = select_runtime(
            p.spec, runtimes, built_in_server_types=config.built_in_server_types, rest_proxy=config.rest_proxy_enabled
        )
        if pin and selection.runtimes:
            used.add(pinned_runtime(p.spec, selection.runtimes))
        else:
            used.update(selection.runtimes)
    return frozenset(used)


def plan_runtimes(
    *,
    runtimes: Mapping[str, Runtime],
    predictors: Iterable[PredictorCR],
    observed: Mapping[str, ObservedDeployment],
    records: Mapping[str, RuntimeRecord],
    config: ServingConfig,
    namespace: str,
    storage: StorageConfig,
    scheduler_address: str,
    now: float,
    runtime_prefix: str = "",
    hpa: bool = False,
    runtime_meta: Mapping[str, tuple[str, Mapping[str, str]]] | None = None,
    pressure: bool = False,
    internal_tls: InternalTls | None = None,
) -> RuntimePlan:
    """Deployment actions for every runtime of one namespace (see module docstring).

    `runtime_prefix` (cluster scope: `<namespace>__`) goes before the runtime name the pods
    register with, and then a model uses only the runtime it is pinned to. With `hpa` the
    plan carries the runtimes' HorizontalPodAutoscalers; `runtime_meta` (runtime name ->
    (uid, metadata labels) of its object) makes the runtime their owner and gives them its labels.
    With `pressure` the replicas of runtimes without an autoscaler class follow
    `hpa.pressure_replicas`. `internal_tls`: the Secret mounted into every runtime pod's puller."""
    predictors = list(predictors)   # read once per runtime (allowAnyPVC claims)
    used = runtimes_in_use(predictors, runtimes, config=config, pin=bool(runtime_prefix))
    grace = float(config.scale_to_zero_grace_period_seconds)
    actions: list[DeploymentAction] = []
    new_records: dict[str, RuntimeRecord] = {}
    invalid: dict[str, tuple[str, ...]] = {}
    requeue: float | None = None
    wanted_names: set[str] = set()
    hpas: list[HpaPlan] = []
    for name, rt in sorted(runtimes.items()):
        dep_name = deploy.deployment_name(config, name)
        current = observed.get(dep_name)
        errors = validate_runtime(rt, built_in_server_types=config.built_in_server_types)
        if errors:
            invalid[name] = tuple(errors)
        if not is_eligible(rt, built_in_server_types=config.built_in_server_types):
            continue   # its Deployment (if any) is deleted below
        wanted_names.add(dep_name)
        in_use = name in used
        replicas = rt.replicas if rt.replicas is not None else config.pods_per_runtime
        record = records.get(name)
        reason = "in use" if in_use else "scale-to-zero disabled"
        if in_use:
            new_records[name] = RuntimeRecord(in_use=True)
        elif config.scale_to_zero_enabled:
            if record is None:
                replicas, reason = 0, "unused at first reconcile"
                new_records[name] = RuntimeRecord(in_use=False, unused_since=None)
            else:
                since = record.unused_since if record.unused_since is not None else (now if record.in_use else None)
                if since is None or now - since >= grace:
                    replicas, reason = 0, "unused for the grace period"
                    new_records[name] = RuntimeRecord(in_use=False, unused_since=since)
                else:
                    reason = "unused, within the grace period"
                    new_records[name] = RuntimeRecord(in_use=False, unused_since=since)
                    left = max(grace - (now - since), 0.001)
                    requeue = left if requeue is None else min(requeue, left)
        else:
            new_records[name] = RuntimeRecord(in_use=False)
        if hpa and (current is None or current.managed):   # a Deployment not ours gets no HPA of ours
            hpa_plan, replicas = _plan_hpa(rt, dep_name=dep_name, namespace=namespace, planned=replicas, current=current,
                                           meta=(runtime_meta or {}).get(name))
            hpas.append(hpa_plan)
        if pressure and (current is None or current.managed):
            replicas = autoscaling.pressure_replicas(rt, planned=replicas, existing=current.replicas if current else None)
        manifest = deploy.build_runtime_deployment(
            runtime=rt, config=config, namespace=namespace, replicas=replicas, storage=storage,
            scheduler_address=scheduler_address, runtime_id=f"{runtime_prefix}{name}",
            pvc_claims=deploy.predictor_pvc_claims(predictors, runtime_name=name, runtimes=runtimes, config=config),
            internal_tls=internal_tls,
        )
        desired_hash = manifest["metadata"]["annotations"][deploy.SPEC_HASH_ANNOTATION]
        if current is None:
            if replicas > 0 or in_use:
                actions.append(DeploymentAction(ActionKind.CREATE, dep_name, name, replicas, manifest, reason))
            continue
        if not current.managed:
            continue
        if current.spec_hash != desired_hash:
            actions.append(DeploymentAction(ActionKind.PATCH, dep_name, name, replicas, manifest, reason))
        elif current.replicas != replicas:
            actions.append(DeploymentAction(ActionKind.SCALE, dep_name, name, replicas, None, reason))
    for dep_name, current in sorted(observed.items()):
        if current.managed and dep_name not in wanted_names:
            runtime = dep_name.removeprefix(f"{config.inference_service_name}-")
            actions.append(DeploymentAction(ActionKind.DELETE, dep_name, runtime, 0, None, "runtime gone, disabled or not multiModel"))
    return RuntimePlan(actions=tuple(actions), records=new_records, requeue_after=requeue, invalid=invalid,
                       hpas=tuple(hpas))


def _plan_hpa(
    rt: Runtime, *, dep_name: str, namespace: str, planned: int, current: ObservedDeployment | None,
    meta: tuple[str, Mapping[str, str]] | None,
) -> tuple[HpaPlan, int]:
    """The runtime's HpaPlan and the replicas its Deployment gets (see the module docstring)."""
    uid, labels = meta if meta is not None else ("", {})
    try:
        desired = autoscaling.build_hpa(rt, deployment_name=dep_name, namespace=namespace, owner_uid=uid, labels=labels)
    except autoscaling.AutoscalingError as err:
        held = current.replicas if current is not None and current.replicas > 0 and planned > 0 else planned
        return HpaPlan(dep_name, rt.name, error=str(err)), held
    replicas = autoscaling.deployment_replicas(
        hpa=desired, planned=planned, existing=current.replicas if current is not None else None)
    return HpaPlan(dep_name, rt.name, desired, wanted=autoscaling.wants_hpa(hpa=desired, planned=planned)), replicas


class PredictorOp(enum.StrEnum):
    SET_VMODEL = "set-vmodel"
    DELETE_VMODEL = "delete-vmodel"
    READ_STATUS = "read-status"      # invalid spec: only follow the scheduler's view
    NO_RUNTIME = "no-runtime"        # nothing can serve it; do not register


@dataclass(frozen=True)
class PredictorPlan:
    op: PredictorOp
    failure: SelectionFailure | None = None
    runtimes: tuple[str, ...] = ()


def plan_predictor(predictor: PredictorCR | None, *, runtimes: Mapping[str, Runtime], config: ServingConfig) -> PredictorPlan:
    """The scheduler operation for one CR; `None` means the CR is gone (delete its vmodel)."""
    if predictor is None or predictor.deleting:
        return PredictorPlan(PredictorOp.DELETE_VMODEL)
    if predictor.spec is None:
        return PredictorPlan(PredictorOp.READ_STATUS)
    selection = select_runtime(
        predictor.spec, runtimes, built_in_server_types=config.built_in_server_types, rest_proxy=config.rest_proxy_enabled
    )
    if selection.failure is not None:
        return PredictorPlan(PredictorOp.NO_RUNTIME, failure=selection.failure)
    return PredictorPlan(PredictorOp.SET_VMODEL, runtimes=selection.runtimes)
