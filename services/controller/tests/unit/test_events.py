"""EventRecorder: de-duplication and rate limit of the Kubernetes recorder, the log recorder,
redaction, and the Reconciler's InvalidConfig / ScaledToZero / ScaledUp reporting (no I/O)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest

from meshserve.controller import kube
from meshserve.controller.events import (
    MAX_MESSAGE,
    EventType,
    InvolvedObject,
    KubeEventRecorder,
    LogEventRecorder,
    redact,
)
from meshserve.controller.kube import KubeError, ResourceKind
from meshserve.controller.reconcile import ActionKind, DeploymentAction, ObservedDeployment
from meshserve.controller.storage_config import parse_storage_secret
from meshserve.controller.worker import Reconciler

NS = "modelmesh-serving"
ISVC = InvolvedObject(kind="InferenceService", api_version="serving.kserve.io/v1beta1", name="bad", namespace=NS, uid="u-1")


class FakeEventsApi:
    """The two verbs the recorder uses, recording calls; `fail` maps a verb to an error to raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Mapping[str, Any]]] = []
        self.fail: dict[str, KubeError] = {}

    async def create(self, kind: ResourceKind, *, namespace: str = "", body: Mapping[str, Any]) -> dict[str, Any]:
        assert kind is kube.EVENT
        if "create" in self.fail:
            raise self.fail.pop("create")
        self.calls.append(("create", namespace, body))
        return dict(body)

    async def merge_patch(self, kind: ResourceKind, *, namespace: str = "", name: str, patch: Mapping[str, Any],
                          subresource: str = "") -> dict[str, Any]:
        if "patch" in self.fail:
            raise self.fail.pop("patch")
        self.calls.append(("patch", f"{namespace}/{name}", patch))
        return dict(patch)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def recorder(api: FakeEventsApi, clock: Clock, **kw: Any) -> KubeEventRecorder:
    return KubeEventRecorder(api, namespace=NS, clock=clock, instance="pod-a", **kw)  # type: ignore[arg-type]


async def test_first_event_is_created_with_every_field() -> None:
    api, clock = FakeEventsApi(), Clock()
    rec = recorder(api, clock)
    rec.record(ISVC, type=EventType.WARNING, reason="InvalidSpec", message="bad spec")
    await rec.flush()
    [(verb, ns, body)] = api.calls
    assert verb == "create" and ns == NS
    assert body["metadata"]["name"].startswith("bad.") and body["metadata"]["namespace"] == NS
    assert body["involvedObject"] == {"kind": "InferenceService", "apiVersion": "serving.kserve.io/v1beta1",
                                      "name": "bad", "namespace": NS, "uid": "u-1"}
    assert (body["reason"], body["message"], body["type"], body["count"]) == ("InvalidSpec", "bad spec", "Warning", 1)
    assert body["source"] == {"component": "meshserve-controller"}
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2023-11-14T22:13:20Z"
    assert body["reportingInstance"] == "pod-a"


async def test_repeats_bump_count_and_are_rate_limited_per_key() -> None:
    api, clock = FakeEventsApi(), Clock()
    rec = recorder(api, clock, repeat_interval=60)
    for _ in range(5):                     # one create, then four repeats inside the window: counted only
        rec.record(ISVC, type=EventType.WARNING, reason="InvalidSpec", message="bad spec")
        clock.now += 1
    await rec.flush()
    assert [c[0] for c in api.calls] == ["create"]
    clock.now += 60
    rec.record(ISVC, type=EventType.WARNING, reason="InvalidSpec", message="bad spec")
    await rec.flush()
    verb, where, patch = api.calls[-1]
    name = api.calls[0][2]["metadata"]["name"]
    assert (verb, where) == ("patch", f"{NS}/{name}")
    assert patch == {"count": 6, "lastTimestamp": "2023-11-14T22:14:25Z"}
    # a different message is a different Event
    rec.record(ISVC, type=EventType.WARNING, reason="InvalidSpec", message="another problem")
    await rec.flush()
    assert api.calls[-1][0] == "create" and api.calls[-1][2]["message"] == "another problem"


async def test_gone_event_is_recreated_with_the_accumulated_count() -> None:
    api, clock = FakeEventsApi(), Clock()
    rec = recorder(api, clock, repeat_interval=0)
    rec.record(ISVC, type=EventType.WARNING, reason="InvalidSpec", message="m")
    await rec.flush()
    api.fail["patch"] = KubeError(404, "events not found")
    rec.record(ISVC, type=EventType.WARNING, reason="InvalidSpec", message="m")
    await rec.flush()
    assert [c[0] for c in api.calls] == ["create", "create"]
    assert api.calls[-1][2]["count"] == 2
    rec.record(ISVC, type=EventType.WARNING, reason="InvalidSpec", message="m")
    await rec.flush()
    assert api.calls[-1][0] == "patch" and api.calls[-1][1] == f"{NS}/{api.calls[1][2]['metadata']['name']}"


async def test_write_failures_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    api, clock = FakeEventsApi(), Clock()
    rec = recorder(api, clock)
    api.fail["create"] = KubeError(403, "forbidden")
    rec.record(ISVC, type=EventType.WARNING, reason="InvalidSpec", message="m")
    with caplog.at_level(logging.WARNING):
        await rec.flush()
    assert "could not write event InvalidSpec" in caplog.text
    rec.record(ISVC, type=EventType.WARNING, reason="InvalidSpec", message="m")   # not remembered: created now
    await rec.flush()
    assert [c[0] for c in api.calls] == ["create"]


async def test_queue_overflow_drops_and_cache_is_bounded() -> None:
    api, clock = FakeEventsApi(), Clock()
    rec = recorder(api, clock, queue_size=2, cache_size=2)
    for i in range(3):
        rec.record(ISVC, type=EventType.NORMAL, reason="R", message=f"m{i}")
    assert rec.dropped == 1
    await rec.flush()
    rec.record(ISVC, type=EventType.NORMAL, reason="R", message="m2")
    await rec.flush()
    assert len(rec.seen) == 2 and len(api.calls) == 3


def test_log_recorder_logs_by_type(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="meshserve.controller.events"):
        LogEventRecorder().record(ISVC, type=EventType.WARNING, reason="InvalidSpec", message="bad spec")
        LogEventRecorder().record(ISVC, type=EventType.NORMAL, reason="ScaledUp", message="up")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels == [
        (logging.WARNING, f"event Warning InvalidSpec on InferenceService {NS}/bad: bad spec"),
        (logging.INFO, f"event Normal ScaledUp on InferenceService {NS}/bad: up"),
    ]


def test_redact_removes_userinfo_and_secret_values_and_caps_length() -> None:
    message = "cannot fetch s3://AKIAEXAMPLE:wJalrXUtnFEMI@minio:9000/b and key wJalrXUtnFEMI2 (abc)"
    out = redact(message, ["wJalrXUtnFEMI2", "abc"])
    assert out == "cannot fetch s3://***@minio:9000/b and key *** (abc)"
    assert len(redact("x" * 5000)) == MAX_MESSAGE


def test_involved_object_of_a_cluster_scoped_object_has_no_namespace() -> None:
    obj = {"metadata": {"name": "rt", "uid": "u", "resourceVersion": "7"}}
    ref = InvolvedObject.of(kube.CLUSTER_SERVING_RUNTIME, obj, namespace=NS)
    assert ref.to_k8s() == {"kind": "ClusterServingRuntime", "apiVersion": "serving.kserve.io/v1alpha1",
                            "name": "rt", "uid": "u", "resourceVersion": "7"}


class Captured:
    def __init__(self) -> None:
        self.events: list[tuple[InvolvedObject, EventType, str, str]] = []

    def record(self, obj: InvolvedObject, *, type: EventType, reason: str, message: str) -> None:
        self.events.append((obj, type, reason, message))

    async def run(self) -> None:
        return None


def reconciler(events: Captured) -> Reconciler:
    return Reconciler(api=None, scheduler=None, namespace=NS, config_map_name="model-serving-config",  # type: ignore[arg-type]
                      scheduler_address="sched:8080", events=events, runtime_backend=object())  # type: ignore[arg-type]


def test_invalid_serving_config_records_invalid_config_and_keeps_previous() -> None:
    events = Captured()
    r = reconciler(events)
    cm = {"metadata": {"name": "model-serving-config", "namespace": NS, "uid": "cm-1"}}
    r.on_event(kube.CONFIG_MAP, "ADDED", {**cm, "data": {"config.yaml": "podsPerRuntime: 3\n"}}, None)
    assert not events.events and r.config.pods_per_runtime == 3
    r.on_event(kube.CONFIG_MAP, "MODIFIED", {**cm, "data": {"config.yaml": 'podsPerRuntime: "two"\n'}}, None)
    [(obj, etype, reason, message)] = events.events
    assert (obj.kind, obj.name, obj.uid, etype, reason) == ("ConfigMap", "model-serving-config", "cm-1",
                                                           EventType.WARNING, "InvalidConfig")
    assert message.startswith("invalid model-serving-config, keeping the previous configuration: ")
    assert "podsPerRuntime" in message
    assert r.config.pods_per_runtime == 3


def test_an_unknown_config_key_is_an_event_naming_the_nearest_key_once_per_change() -> None:
    events = Captured()
    r = reconciler(events)
    cm = {"metadata": {"name": "model-serving-config", "namespace": NS, "uid": "cm-1"}}
    typo = {**cm, "data": {"config.yaml": "podsPerRuntim: 3\n"}}
    r.on_event(kube.CONFIG_MAP, "ADDED", typo, None)
    [(obj, etype, reason, message)] = events.events
    assert (obj.kind, obj.name, etype, reason) == ("ConfigMap", "model-serving-config", EventType.WARNING,
                                                   "ConfigKeyIgnored")
    assert "podsPerRuntim" in message and "podsPerRuntime" in message
    r.on_event(kube.CONFIG_MAP, "MODIFIED", typo, typo)        # a re-list: same content, no new Event
    assert len(events.events) == 1
    r.on_event(kube.CONFIG_MAP, "MODIFIED", {**cm, "data": {"config.yaml": "podsPerRuntime: 3\n"}}, typo)
    assert len(events.events) == 1 and r.config.pods_per_runtime == 3


def test_reconciler_events_never_carry_storage_credentials() -> None:
    events = Captured()
    r = reconciler(events)
    r.storages[r.namespace] = parse_storage_secret(
        {"s3": '{"type": "s3", "bucket": "models", "access_key_id": "AKIAEXAMPLE", "secret_access_key": "wJalrXUtnFEMI"}'},
        base64_encoded=False,
    )
    r.event(ISVC, EventType.WARNING, "InvalidSpec", "key AKIAEXAMPLE secret wJalrXUtnFEMI bucket models")
    assert events.events[0][3] == "key *** secret *** bucket models"


@pytest.mark.parametrize(("before", "after", "reason"), [(3, 0, "ScaledToZero"), (0, 2, "ScaledUp"), (2, 3, None), (0, 0, None)])
def test_scale_events_on_the_serving_runtime(before: int, after: int, reason: str | None) -> None:
    events = Captured()
    r = reconciler(events)
    r.informers["ServingRuntime"].store[(NS, "mlserver-1.x")] = {
        "metadata": {"name": "mlserver-1.x", "namespace": NS, "uid": "rt-1"}}
    action = DeploymentAction(ActionKind.SCALE, "modelmesh-serving-mlserver-1.x", "mlserver-1.x", after, None, "in use")
    r._scale_event(action, ObservedDeployment("modelmesh-serving-mlserver-1.x", before, "h"), namespace=NS)
    if reason is None:
        assert events.events == []
        return
    [(obj, etype, got, message)] = events.events
    assert (obj.kind, obj.uid, etype, got) == ("ServingRuntime", "rt-1", EventType.NORMAL, reason)
    assert "modelmesh-serving-mlserver-1.x" in message


def test_scale_event_falls_back_to_the_cluster_serving_runtime() -> None:
    events = Captured()
    r = reconciler(events)
    r.informers["ClusterServingRuntime"].store[("", "triton")] = {"metadata": {"name": "triton", "uid": "c-1"}}
    action = DeploymentAction(ActionKind.PATCH, "modelmesh-serving-triton", "triton", 0, {}, "unused for the grace period")
    r._scale_event(action, ObservedDeployment("modelmesh-serving-triton", 2, "h"), namespace=NS)
    [(obj, _, reason, _)] = events.events
    assert (obj.kind, obj.namespace, obj.uid, reason) == ("ClusterServingRuntime", "", "c-1", "ScaledToZero")
