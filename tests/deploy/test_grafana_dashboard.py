"""The Grafana dashboard (deploy/grafana/meshserve-dashboard.json) is a valid dashboard and every
query in it names only metrics, functions and labels that really exist.

Metric names come from the services' own registries (`metric_catalogue`), label names from the
metrics' declared labels plus what the Prometheus-operator monitors add to every target
(including the relabelings of deploy/kustomize/components/prometheus-operator). The negative
cases prove the checker catches a misspelled metric, upstream's un-suffixed counter name, a
made-up function and a label the metric does not have.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import promql
from .metric_catalogue import (
    TARGET_LABELS,
    Series,
    catalogue,
    derived_series_names,
    series_names_by_exposition,
    unknown_metric_classes,
)

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "meshserve-dashboard.json"
MONITORS = REPO / "deploy" / "kustomize" / "components" / "prometheus-operator"
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text", "row"}
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}


def relabeled_target_labels() -> set[str]:
    """Labels the monitors' relabelings write (e.g. `runtime` from the pod label)."""
    labels = set()
    for path in MONITORS.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("apiVersion") != "monitoring.coreos.com/v1":
                continue
            for ep in doc["spec"].get("endpoints", []) + doc["spec"].get("podMetricsEndpoints", []):
                labels |= {r["targetLabel"] for r in ep.get("relabelings", []) if "targetLabel" in r}
    return labels


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if isinstance(target.get("expr"), str) and target["expr"].strip():   # else: structure_problems
                yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q, re.S)
            if m:   # Grafana's label_values(selector, label): the selector is PromQL
                yield f"variable {var['name']}", f"group by ({m.group(2)}) ({m.group(1)})"
            else:
                yield f"variable {var['name']}", q


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def problems_in(dashboard: dict[str, Any], known: dict[str, Series], target_labels: set[str]) -> list[str]:
    """What is wrong with the queries: unknown metrics, functions, labels; unparsable PromQL."""
    problems = []
    defined_vars = {v["name"] for v in dashboard.get("templating", {}).get("list", [])} | GRAFANA_VARIABLES
    allowed_functions = promql.FUNCTIONS | promql.AGGREGATIONS
    for where, expr in queries(dashboard):
        try:
            found = promql.names(expr)
        except promql.PromQLError as err:
            problems.append(f"{where}: {err}")
            continue
        for name in found.metrics:
            if name not in known:
                problems.append(f"{where}: no service exports a metric named {name!r}")
        for fn in found.functions:
            if fn not in allowed_functions:
                problems.append(f"{where}: {fn!r} is not a PromQL function")
        for metric, label in found.labels:
            if metric in known and label not in known[metric].labels | target_labels:
                problems.append(f"{where}: {metric} has no label {label!r}")
        for var in re.findall(r"\$\{?(\w+)", expr):
            if var not in defined_vars and not var.isdigit():
                problems.append(f"{where}: variable ${var} is not defined")
    return problems


def structure_problems(dashboard: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("title", "uid", "schemaVersion", "panels", "templating"):
        if key not in dashboard:
            problems.append(f"dashboard has no {key}")
    ids = [p.get("id") for p in _panels(dashboard.get("panels", []))]
    if len(ids) != len(set(ids)) or None in ids:
        problems.append(f"panel ids must be set and unique: {ids}")
    for p in _panels(dashboard.get("panels", [])):
        ref = f"panel {p.get('title')!r}"
        if p.get("type") not in PANEL_TYPES:
            problems.append(f"{ref}: unknown type {p.get('type')!r}")
        pos = p.get("gridPos", {})
        if not all(isinstance(pos.get(k), int) for k in "hwxy") or pos.get("x", 0) + pos.get("w", 0) > 24:
            problems.append(f"{ref}: bad gridPos {pos}")
        if p.get("type") == "row":
            continue
        if not p.get("title"):
            problems.append(f"panel {p.get('id')}: no title")
        if (p.get("datasource") or {}).get("type") != "prometheus":
            problems.append(f"{ref}: datasource must be a prometheus one, got {p.get('datasource')!r}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{ref}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)) or None in refs:
            problems.append(f"{ref}: refIds must be set and unique: {refs}")
        for t in targets:
            if not isinstance(t.get("expr"), str) or not t["expr"].strip():
                problems.append(f"{ref}: target {t.get('refId')} has no expr")
    return problems


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def known() -> dict[str, Series]:
    return catalogue()


@pytest.fixture(scope="module")
def target_labels() -> set[str]:
    return set(TARGET_LABELS) | relabeled_target_labels()


def test_the_dashboard_is_a_valid_dashboard(dashboard: dict[str, Any]) -> None:
    assert structure_problems(dashboard) == []


def test_every_query_names_metrics_functions_and_labels_that_exist(
    dashboard: dict[str, Any], known: dict[str, Series], target_labels: set[str]
) -> None:
    assert "runtime" in target_labels, "the PodMonitor should copy the runtime's pod label"
    assert problems_in(dashboard, known, target_labels) == []


def test_the_dashboard_has_upstreams_panels_and_placement_density(dashboard: dict[str, Any]) -> None:
    titles = {p["title"] for p in _panels(dashboard["panels"])}
    upstream = {
        "Global LRU age", "Cluster capacity and utilization", "Model counts", "Inference API request rate",
        "Average inference request and response sizes", "Cache misses", "Cache miss rate",
        "Cache miss delay (average)", "Model loads / unloads", "Loaded model sizes", "Model loading times",
    }
    assert upstream <= titles
    exprs = " ".join(expr for _, expr in queries(dashboard))
    density = next(p for p in _panels(dashboard["panels"]) if p["title"] == "Measured bytes / capacity per pod")
    names = promql.names(density["targets"][0]["expr"]).metrics
    assert set(names) == {"meshserve_puller_measured_bytes", "modelmesh_instance_capacity_bytes"}
    assert "by (pod)" in density["targets"][0]["expr"] and density["fieldConfig"]["defaults"]["unit"] == "percentunit"
    # every upstream metric meshserve exports is on the dashboard somewhere
    for family in ("modelmesh_instance_lru_age_seconds", "modelmesh_age_at_eviction_milliseconds",
                   "modelmesh_instance_used_bytes", "modelmesh_models_managed_total", "modelmesh_instance_models_total",
                   "modelmesh_api_request_milliseconds", "modelmesh_invoke_model_milliseconds",
                   "modelmesh_request_size_bytes", "modelmesh_response_size_bytes", "modelmesh_cache_miss_milliseconds",
                   "modelmesh_loadmodel_milliseconds", "modelmesh_unloadmodel_milliseconds", "modelmesh_loadmodel_failure",
                   "modelmesh_loaded_model_size_bytes", "modelmesh_model_sizing_milliseconds"):
        assert family in exprs, family


# --- the checker itself ------------------------------------------------------------------------


def _with_expr(dashboard: dict[str, Any], expr: str) -> dict[str, Any]:
    bad = copy.deepcopy(dashboard)
    first = next(p for p in _panels(bad["panels"]) if p.get("targets"))
    first["targets"][0]["expr"] = expr
    return bad


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        pytest.param('sum(rate(modelmesh_api_request_miliseconds_count{namespace="$namespace"}[5m]))',
                     "modelmesh_api_request_miliseconds_count", id="misspelled-metric"),
        # upstream's dashboard queries the counter without `_total`: prometheus_client exports `_total`
        pytest.param("sum(increase(modelmesh_loadmodel_failure[$__rate_interval]))",
                     "'modelmesh_loadmodel_failure'", id="counter-without-total"),
        pytest.param("modelmesh_loadmodel_milliseconds", "'modelmesh_loadmodel_milliseconds'", id="histogram-family"),
        pytest.param("count(container_memory_usage_bytes)", "container_memory_usage_bytes", id="cadvisor-metric"),
        pytest.param("sum(rates(modelmesh_instance_used_bytes[5m]))", "'rates' is not a PromQL function", id="function"),
        pytest.param('modelmesh_instance_used_bytes{code="OK"}', "has no label 'code'", id="label"),
        pytest.param('modelmesh_instance_used_bytes{namespace="$nmespace"}', "$nmespace", id="variable"),
        pytest.param("sum(modelmesh_instance_used_bytes", "unclosed", id="unbalanced"),
    ],
)
def test_the_checker_catches(
    dashboard: dict[str, Any], known: dict[str, Series], target_labels: set[str], expr: str, needle: str
) -> None:
    problems = problems_in(_with_expr(dashboard, expr), known, target_labels)
    assert problems and any(needle in p for p in problems), problems


def test_the_structure_check_catches_a_panel_without_datasource_or_expr(dashboard: dict[str, Any]) -> None:
    bad = copy.deepcopy(dashboard)
    first = next(p for p in _panels(bad["panels"]) if p.get("targets"))
    del first["datasource"]
    first["targets"][0]["expr"] = " "
    problems = structure_problems(bad)
    assert any("datasource" in p for p in problems) and any("has no expr" in p for p in problems)


@pytest.mark.parametrize(
    ("expr", "metrics", "functions", "labels"),
    [
        pytest.param(
            'label_replace(sum by (pod) (rate(a_total{namespace="$namespace",code!~"OK|x"}[$__rate_interval])), "short", "$1", "pod", "(.*)")',
            ("a_total",), ("label_replace", "sum", "rate"), (("a_total", "namespace"), ("a_total", "code")), id="nested",
        ),
        pytest.param(
            "sum(x) by (le, job) / on (job) group_left (instance) y offset 1h > bool 0.5e3 and z unless w or v",
            ("x", "y", "z", "w", "v"), ("sum",), (), id="keywords-and-label-lists",
        ),
        pytest.param(
            'histogram_quantile(0.9, sum without (pod) (rate(h_bucket[5m:1m]))) * 1024 - inf + 0x1f',
            ("h_bucket",), ("histogram_quantile", "sum", "rate"), (), id="numbers-and-subquery",
        ),
        pytest.param("count by (runtime) (m{a=~\"$runtime\"}) > 0", ("m",), ("count",), (("m", "a"),), id="grouping-first"),
        pytest.param('{__name__="up", job="j"}', ("up",), (), (("up", "job"),), id="name-matcher"),
        pytest.param("record:rule_name:rate5m", ("record:rule_name:rate5m",), (), (), id="recording-rule"),
    ],
)
def test_the_tokenizer(expr: str, metrics: tuple[str, ...], functions: tuple[str, ...], labels: tuple[tuple[str, str], ...]) -> None:
    found = promql.names(expr)
    assert (found.metrics, found.functions, found.labels) == (metrics, functions, labels)


def test_the_catalogue_is_read_from_the_registries(known: dict[str, Series]) -> None:
    assert unknown_metric_classes() == []
    # suffixes as prometheus_client writes them
    sample = {"a": "counter", "b": "gauge", "c": "histogram", "d": "summary", "e": "info"}
    assert derived_series_names(sample) == series_names_by_exposition(sample)
    assert known["modelmesh_api_request_milliseconds_bucket"].labels >= {"le", "method", "code", "modelId", "vModelId"}
    assert known["modelmesh_loadmodel_failure_total"].type == "counter"
    assert "modelmesh_loadmodel_failure" not in known
    assert known["modelmesh_instance_capacity_bytes"].services == {"puller"}
    assert known["modelmesh_models_loaded_total"].services == {"scheduler"}
    assert known["meshserve_puller_measured_bytes"].type == "gauge"
    assert {"router", "scheduler", "puller"} <= known["process_resident_memory_bytes"].services
