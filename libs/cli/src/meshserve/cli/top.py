"""`meshserve top pods` and `meshserve top models`: live usage, refreshed every few seconds.

Where each figure comes from:

* the placement (pods, capacity, the bytes the copies take, the model server's resident
  memory, copies, state) from the scheduler's admin API (`/v1/pods`, `/v1/models`): the
  numbers the pullers export as `modelmesh_instance_*` on their own :2112, which local mode
  does not open;
* request counts and latency from the router's Prometheus endpoint (`/metrics` on its REST
  port), parsed with prometheus_client's parser: `meshserve_router_requests_total{model}`
  for counts and `modelmesh_api_request_milliseconds{modelId}` for latency (that one carries
  a model only with the router's per-model metrics on, upstream's `per_model_metrics`; without
  them the model latency reads `-` and the footer gives the latency of all requests).

Rates are counter differences between two scrapes divided by the time between them, so the
first frame of a live `top` has none yet and `--once` scrapes twice, `--interval` apart.
The router does not label requests by pod, so a pod's rate is the sum of its models' rates,
each shared evenly among the model's loaded copies (the router balances across them).

Everything here but `scrape` is pure: samples, the time between them and the admin API's
views in, rows out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from meshserve.cli.watching import Unreachable, mib

REQUESTS_METRIC = "meshserve_router_requests_total"
LATENCY_METRIC = "modelmesh_api_request_milliseconds"


@dataclass
class Histogram:
    count: float = 0.0
    sum: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)   # upper bound -> cumulative count

    def add(self, other: Histogram) -> None:
        self.count += other.count
        self.sum += other.sum
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + n

    def minus(self, older: Histogram | None) -> Histogram:
        """What was observed since `older` (a counter reset, e.g. a restarted router: all of it)."""
        if older is None or self.count < older.count:
            return self
        return Histogram(
            count=self.count - older.count, sum=self.sum - older.sum,
            buckets={le: n - older.buckets.get(le, 0.0) for le, n in self.buckets.items()},
        )

    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear inside the bucket the rank falls in."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le in sorted(self.buckets):
            n = self.buckets[le]
            if n >= rank:
                if math.isinf(le):
                    return lower
                inside = n - below
                return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
            lower, below = le, n
        return lower


@dataclass
class RouterSample:
    """What one scrape of the router's /metrics says."""

    requests: dict[str, float] = field(default_factory=dict)       # model -> requests answered (all codes)
    latency: dict[str, Histogram] = field(default_factory=dict)    # model -> request time (ms)
    latency_all: Histogram = field(default_factory=Histogram)      # every request, with or without model labels
    per_model_latency: bool = False


def parse_router_metrics(text: str) -> RouterSample:
    """The families `top` reads from the Prometheus text of one router (or several, summed)."""
    sample = RouterSample()
    for family in text_string_to_metric_families(text):
        if family.name == REQUESTS_METRIC.removesuffix("_total"):
            for s in family.samples:
                if s.name == REQUESTS_METRIC and "model" in s.labels:
                    model = s.labels["model"]
                    sample.requests[model] = sample.requests.get(model, 0.0) + s.value
        elif family.name == LATENCY_METRIC:
            series: dict[tuple[tuple[str, str], ...], Histogram] = {}
            for s in family.samples:
                labels = {k: v for k, v in s.labels.items() if k != "le"}
                h = series.setdefault(tuple(sorted(labels.items())), Histogram())
                if s.name.endswith("_count"):
                    h.count = s.value
                elif s.name.endswith("_sum"):
                    h.sum = s.value
                elif s.name.endswith("_bucket"):
                    h.buckets[float(s.labels["le"])] = s.value
            for key, h in series.items():
                sample.latency_all.add(h)
                model_id = dict(key).get("modelId")
                if model_id:
                    sample.per_model_latency = True
                    sample.latency.setdefault(model_id, Histogram()).add(h)
    return sample


def merge(samples: Sequence[RouterSample]) -> RouterSample:
    """Several routers (several --metrics URLs) as one."""
    out = RouterSample()
    for s in samples:
        for model, n in s.requests.items():
            out.requests[model] = out.requests.get(model, 0.0) + n
        for model, h in s.latency.items():
            out.latency.setdefault(model, Histogram()).add(h)
        out.latency_all.add(s.latency_all)
        out.per_model_latency = out.per_model_latency or s.per_model_latency
    return out


def scrape(url: str, *, timeout: float = 5.0) -> RouterSample:
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as err:
        raise Unreachable(f"cannot read the router's metrics at {url}: {err}") from None
    if response.status_code != 200:
        raise Unreachable(f"the router's metrics at {url} answered {response.status_code}")
    return parse_router_metrics(response.text)


@dataclass(frozen=True)
class Window:
    """Two scrapes and the seconds between them (`older` None: one scrape, no rates)."""

    newer: RouterSample
    older: RouterSample | None = None
    seconds: float = 0.0

    def rate(self, model: str) -> float | None:
        if self.older is None or self.seconds <= 0:
            return None
        now, then = self.newer.requests.get(model, 0.0), self.older.requests.get(model, 0.0)
        return max(0.0, (now - then if now >= then else now) / self.seconds)

    def latency(self, model: str) -> Histogram | None:
        h = self.newer.latency.get(model)
        if h is None:
            return None
        return h.minus(self.older.latency.get(model) if self.older is not None else None)

    def latency_all(self) -> Histogram:
        return self.newer.latency_all.minus(self.older.latency_all if self.older is not None else None)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def loaded_copies(model: Mapping[str, Any]) -> list[str]:
    return [str(c["pod"]) for c in model.get("copies") or [] if c.get("state") == "loaded"]


MODEL_HEADER = ["MODEL", "STATE", "COPIES", "REQUESTS", "REQ/S", "AVG MS", "P95 MS"]
POD_HEADER = ["POD", "RUNTIME", "CAPACITY", "USED", "USED%", "RSS", "MODELS", "LOADING", "REQ/S"]


def model_rows(models: Sequence[Mapping[str, Any]], window: Window | None) -> list[list[str]]:
    """One row per model: its state and copies (admin API), requests answered since the router
    started, their rate and latency over the window (router metrics)."""
    rows = []
    for m in models:
        mid = str(m["id"])
        h = window.latency(mid) if window is not None else None
        requests = window.newer.requests.get(mid) if window is not None else None
        rows.append([
            mid, str(m.get("state") or "-"),
            f"{len(loaded_copies(m))}/{len(m.get('copies') or [])}",
            "-" if requests is None else str(int(requests)),
            _rate(window.rate(mid) if window is not None else None),
            _ms(h.mean() if h else None), _ms(h.quantile(0.95) if h else None),
        ])
    return rows


def pod_rows(
    pods: Sequence[Mapping[str, Any]], models: Sequence[Mapping[str, Any]], window: Window | None
) -> list[list[str]]:
    """One row per pod: capacity, bytes its copies take (upstream's `modelmesh_instance_used_bytes`:
    each copy as measured on the pod, else as predicted) and their share of the capacity, the model
    server's resident memory (what the pod measures, its own baseline included), copies, loads in
    progress, and its share of its models' rates."""
    copies = {str(m["id"]): len(loaded_copies(m)) for m in models}
    rows = []
    for p in pods:
        capacity = int(p.get("capacityBytes") or 0)
        used = int(p.get("allocatedBytes") or 0)
        rate: float | None = None
        if window is not None and window.older is not None:
            rate = 0.0
            for held in p.get("models") or []:
                mid = str(held["id"])
                rate += (window.rate(mid) or 0.0) / max(copies.get(mid, 1), 1)
        rows.append([
            str(p["id"]), str(p.get("runtime") or "-"), mib(capacity), mib(used),
            f"{used / capacity * 100:.0f}%" if capacity else "-", mib(int(p.get("measuredUsedBytes") or 0)),
            str(len(p.get("models") or [])), str(p.get("loading", 0)), _rate(rate),
        ])
    return rows


def footer(window: Window | None, *, metrics_error: str = "") -> str:
    if metrics_error:
        return f"(no request figures: {metrics_error})"
    if window is None:
        return ""
    h = window.latency_all()
    span = f"in the last {window.seconds:.1f}s" if window.older is not None else "since the router started"
    if h.count > 0:
        parts = [f"all requests {span}: {int(h.count)}, avg {_ms(h.mean())} ms, p95 {_ms(h.quantile(0.95))} ms"]
    else:
        parts = [f"no requests {span}"]
    if not window.newer.per_model_latency:
        parts.append("(per-model latency needs the router's per-model metrics: MESHSERVE_ROUTER_PER_MODEL_METRICS=true)")
    return "; ".join(parts)
