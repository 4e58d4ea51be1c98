"""The access log (upstream's `enableAccessLogging`): one structured line per inference
request, off unless `MESHSERVE_ROUTER_ACCESS_LOG` is set.

`metrics.observe_request` is the one place every answered request passes through (the
Python doors for what they serve, `app._served_by_envoy` for what Envoy forwards straight
to a pod), so it calls `write` and this module needs no hook of its own in the doors. The
line goes to the `meshserve.router.access` logger: with `MESHSERVE_ROUTER_LOG_JSON` each
field is a key of the JSON line; in text mode the message carries them as `key=value`.
"""

from __future__ import annotations

import logging

log = logging.getLogger("meshserve.router.access")
_enabled = False


def configure(*, enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


def write(
    *, model: str, vmodel: str | None, pod: str | None, protocol: str, method: str, code: str, seconds: float,
    request_bytes: int | None, response_bytes: int | None, path: str,
) -> None:
    """One request answered. `code`: gRPC status name or HTTP status; `path`: "python"
    (the router forwarded it) or "envoy" (Envoy did)."""
    if not _enabled:
        return
    fields = {
        "model_id": model or "-",
        "vmodel_id": vmodel or "-",
        "pod": pod or "-",
        "status": code,
        "ms": round(seconds * 1000, 3),
        "request_bytes": -1 if request_bytes is None else request_bytes,
        "response_bytes": -1 if response_bytes is None else response_bytes,
        "protocol": protocol,
        "method": method,
        "data_path": path,
    }
    log.info("access %s", " ".join(f"{k}={v}" for k, v in fields.items()), extra={"access": True, **fields})
