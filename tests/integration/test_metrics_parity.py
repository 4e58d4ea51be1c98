"""ModelMesh's metrics on a stack of its own: after real traffic (through Envoy and the
Python slow path), loads and an eviction (a pod with room for one copy), every endpoint
is scraped -- the router's /metrics, the scheduler's :2112 and the pod's :2112 (its
puller) -- and each `modelmesh_*` metric is checked: present, of upstream's type, and
moved by what should move it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from meshserve.cli.devstack import PodHandle, Stack, StackConfig
from meshserve.cli.procs import free_port

from .conftest import EXAMPLES, IRIS_URI, mnist_inputs, wait_for

pytestmark = pytest.mark.integration
IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
ONE_COPY = 2000
"""Pod capacity: one iris copy (991 bytes on disk, predicted at x1.25) fits, two do not."""

ROUTER = {
    "modelmesh_api_request_milliseconds": "histogram",
    "modelmesh_invoke_model_milliseconds": "histogram",
    "modelmesh_request_size_bytes": "histogram",
    "modelmesh_response_size_bytes": "histogram",
    "modelmesh_cache_miss_milliseconds": "histogram",
}
SCHEDULER = {
    "modelmesh_loadmodel_milliseconds": "histogram",
    "modelmesh_loadmodel_failure": "counter",
    "modelmesh_unloadmodel_milliseconds": "histogram",
    "modelmesh_unloadmodel_failure": "counter",
    "modelmesh_unloadmodel_attempt_failure": "counter",
    "modelmesh_age_at_eviction_milliseconds": "histogram",
    "modelmesh_loaded_model_size_bytes": "histogram",
    "modelmesh_model_sizing_milliseconds": "histogram",
    "modelmesh_models_loaded_total": "gauge",
    "modelmesh_models_managed_total": "gauge",
    "modelmesh_models_with_failure_total": "gauge",
}
POD = {
    "modelmesh_instance_capacity_bytes": "gauge",
    "modelmesh_instance_used_bytes": "gauge",
    "modelmesh_instance_used_bps": "gauge",
    "modelmesh_instance_lru_seconds": "gauge",
    "modelmesh_instance_lru_age_seconds": "gauge",
    "modelmesh_instance_models_total": "gauge",
}


class Scrape:
    def __init__(self, url: str) -> None:
        text = httpx.get(url, timeout=10).text
        self.types: dict[str, str] = {}
        self.samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.setdefault(sample.name, 0.0)
                self.samples[sample.name] += sample.value  # summed over label sets

    def value(self, name: str) -> float:
        return self.samples.get(name, 0.0)


@pytest.fixture(scope="module")
def mstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, PodHandle, str, str]]:
    given = os.environ.get("MESHSERVE_ROUTER_DATA_PATH")
    os.environ["MESHSERVE_ROUTER_DATA_PATH"] = "envoy"  # the router process inherits it
    scheduler_metrics, pod_metrics = free_port(), free_port()
    config = StackConfig.from_env(
        Path(tmp_path_factory.mktemp("metrics-stack")), pods=0, isolate=True,
        extra_env={
            "MESHSERVE_SCHEDULER_METRICS_PORT": str(scheduler_metrics),
            "MESHSERVE_SCHEDULER_MIN_RESIDENCY_SECONDS": "0",
            "MESHSERVE_SCHEDULER_SCALING_INTERVAL_SECONDS": "1",
        },
    )
    s = Stack(config)
    try:
        s.start()
        s.upload_examples(EXAMPLES)
        pod = s.start_pod(
            capacity_bytes=ONE_COPY,
            env={
                "MESHSERVE_PULLER_METRICS_PORT": str(pod_metrics),
                # sizes from the files (predictions), not from memory: one copy per pod, always
                "MESHSERVE_PULLER_MODEL_SERVER_PID_FILE": str(s.root / "no-such.pid"),
            },
        )
        s.wait_for_pods([pod])
        yield s, pod, f"http://127.0.0.1:{scheduler_metrics}/metrics", f"http://127.0.0.1:{pod_metrics}/metrics"
    finally:
        if given is None:
            os.environ.pop("MESHSERVE_ROUTER_DATA_PATH", None)
        else:
            os.environ["MESHSERVE_ROUTER_DATA_PATH"] = given
        s.stop()


def _check_types(scrape: Scrape, expected: dict[str, str]) -> None:
    for name, kind in expected.items():
        assert scrape.types.get(name) == kind, f"{name}: {scrape.types.get(name)!r}, want {kind}"


def test_modelmesh_metrics_are_served_typed_and_moved(mstack: tuple[Stack, PodHandle, str, str], unique: str) -> None:
    stack, _, scheduler_url, pod_url = mstack
    router_url = f"{stack.router_rest}/metrics"
    router0, scheduler0 = Scrape(router_url), Scrape(scheduler_url)
    first, second = f"iris-a-{unique}", f"iris-b-{unique}"
    for name in (first, second):
        assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        # a cold request (the Python slow path: a miss, a load), then warm ones through Envoy
        assert client.infer(first, mnist_inputs(IRIS)).as_numpy("predict").ravel().tolist() == [0, 2]
        for _ in range(5):
            client.infer(first, mnist_inputs(IRIS))
        pod_one = Scrape(pod_url)
        # the second model has no room but the first's: loading it evicts the first
        assert client.infer(second, mnist_inputs(IRIS)).as_numpy("predict").ravel().tolist() == [0, 2]
        for _ in range(5):
            client.infer(second, mnist_inputs(IRIS))
    finally:
        client.close()

    # router: requests, the pod's share of them, payload sizes, the cache misses' delay. The
    # pod's share is measured for the requests Envoy forwards; right after a load the route may
    # not have reached Envoy yet (the slow path answers those), so warm requests go on until ten
    # went through Envoy
    warm = grpcclient.InferenceServerClient(stack.router_grpc)

    def router_moved() -> Scrape:
        scrape = Scrape(router_url)
        if scrape.value("modelmesh_invoke_model_milliseconds_count") < router0.value(
            "modelmesh_invoke_model_milliseconds_count"
        ) + 10:
            warm.infer(second, mnist_inputs(IRIS))
            raise AssertionError("fewer than ten requests forwarded by Envoy yet")
        return scrape

    try:
        router = wait_for(_retrying(router_moved), what="Envoy's access log of the warm requests")
    finally:
        warm.close()
    _check_types(router, ROUTER)
    assert router.value("modelmesh_api_request_milliseconds_count") - router0.value(
        "modelmesh_api_request_milliseconds_count"
    ) >= 12  # 10 warm (Envoy) + 2 cold (the Python doors)
    for size in ("modelmesh_request_size_bytes", "modelmesh_response_size_bytes"):
        assert router.value(f"{size}_count") - router0.value(f"{size}_count") >= 10
        assert router.value(f"{size}_sum") > router0.value(f"{size}_sum")
    assert router.value("modelmesh_cache_miss_milliseconds_count") - router0.value(
        "modelmesh_cache_miss_milliseconds_count"
    ) >= 2
    assert router.value("meshserve_router_requests_total") > router0.value("meshserve_router_requests_total")
    # Envoy's own stats follow the router's on the same page (per cluster: the forwarded requests)
    assert router.types.get("envoy_cluster_upstream_rq") == "counter"
    assert router.value("envoy_cluster_upstream_rq_total") - router0.value("envoy_cluster_upstream_rq_total") >= 10

    # scheduler: two loads, one eviction (and its unload), the model counts (leader)
    def scheduler_moved() -> Scrape:
        scrape = Scrape(scheduler_url)
        assert scrape.value("modelmesh_models_managed_total") >= 2
        assert scrape.value("modelmesh_models_loaded_total") >= 1
        assert scrape.value("modelmesh_unloadmodel_milliseconds_count") > scheduler0.value(
            "modelmesh_unloadmodel_milliseconds_count"
        )
        return scrape

    scheduler = wait_for(_retrying(scheduler_moved), what="the scheduler's metrics of two loads and an eviction")
    _check_types(scheduler, SCHEDULER)
    assert scheduler.value("modelmesh_loadmodel_milliseconds_count") - scheduler0.value(
        "modelmesh_loadmodel_milliseconds_count"
    ) >= 2
    assert scheduler.value("modelmesh_loadmodel_milliseconds_sum") > scheduler0.value("modelmesh_loadmodel_milliseconds_sum")
    assert scheduler.value("modelmesh_loaded_model_size_bytes_count") - scheduler0.value(
        "modelmesh_loaded_model_size_bytes_count"
    ) >= 2
    assert scheduler.value("modelmesh_age_at_eviction_milliseconds_count") - scheduler0.value(
        "modelmesh_age_at_eviction_milliseconds_count"
    ) >= 1
    assert scheduler.value("modelmesh_loadmodel_failure_total") == scheduler0.value("modelmesh_loadmodel_failure_total")
    assert scheduler.value("modelmesh_models_with_failure_total") == 0
    assert scheduler.value("modelmesh_models_loaded_total") <= scheduler.value("modelmesh_models_managed_total")

    # the pod: capacity, one copy at a time, its use
    pod_now = Scrape(pod_url)
    _check_types(pod_now, POD)
    for scrape in (pod_one, pod_now):
        assert scrape.value("modelmesh_instance_capacity_bytes") == ONE_COPY
        assert scrape.value("modelmesh_instance_models_total") == 1
        used = scrape.value("modelmesh_instance_used_bytes")
        assert 0 < used <= ONE_COPY
        assert scrape.value("modelmesh_instance_used_bps") == int(used / ONE_COPY * 10_000)
        assert scrape.value("modelmesh_instance_lru_seconds") > 0
    assert pod_now.value("modelmesh_instance_lru_seconds") >= pod_one.value("modelmesh_instance_lru_seconds")


def test_a_failed_load_is_counted(mstack: tuple[Stack, PodHandle, str, str], unique: str) -> None:
    stack, _, scheduler_url, _ = mstack
    before = Scrape(scheduler_url).value("modelmesh_loadmodel_failure_total")
    name = f"broken-{unique}"
    # declared small, so it is placed, and its load fails on the pod (no such file)
    uri = IRIS_URI.replace("iris-logreg", "no-such-model")
    assert stack.register(name, storage_uri=uri, sizeBytes=500).status_code == 201
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        with pytest.raises(Exception):  # noqa: B017 - the load's failure, as the client sees it
            client.infer(name, mnist_inputs(IRIS))
    finally:
        client.close()

    def failed() -> Scrape:
        scrape = Scrape(scheduler_url)
        assert scrape.value("modelmesh_loadmodel_failure_total") > before
        assert scrape.value("modelmesh_models_with_failure_total") >= 1
        return scrape

    try:
        wait_for(_retrying(failed), what="the failed load in the scheduler's metrics")
    except AssertionError:
        scrape = Scrape(scheduler_url)
        events = stack.admin("GET", "/v1/events").text[-1500:]
        raise AssertionError(
            f"failures {scrape.value('modelmesh_loadmodel_failure_total')} (before {before}), "
            f"with failure {scrape.value('modelmesh_models_with_failure_total')}; events: {events}"
        ) from None


def _retrying(check):  # type: ignore[no-untyped-def]
    """wait_for's check: the scrape when every assertion holds, else None (try again)."""

    def attempt():  # type: ignore[no-untyped-def]
        try:
            return check()
        except AssertionError:
            return None

    return attempt
