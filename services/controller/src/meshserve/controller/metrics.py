"""Prometheus metrics of the controller's Kubernetes layer (default registry, served by app.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

WATCH_EVENTS = Counter("meshserve_controller_watch_events_total", "Watch events received", ["kind", "type"])
RELISTS = Counter("meshserve_controller_relists_total", "Full re-lists (start, 410 Gone)", ["kind", "reason"])
WATCH_ERRORS = Counter("meshserve_controller_watch_errors_total", "Watch/list failures retried with back-off", ["kind"])
RECONCILES = Counter("meshserve_controller_reconciles_total", "Reconciles run", ["kind", "result"])
QUEUE_DEPTH = Gauge("meshserve_controller_queue_depth", "Keys waiting in the work queue")
