"""The base of the live state's key families: the Redis client, the key prefix, the
registered Lua scripts and the key names they share (`LiveKeys`), and the helpers the
families use. `store.live.LiveState` is the families together (`store/*_keys.py`).

May import: `meshserve.common`, `models`, the store wing, `routing.log`, redis. Never
imports the use cases or the transports.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from meshserve.scheduler.models import (
    CopyRecord,
)
from meshserve.scheduler.routing.log import RouteLog

RELEASED_GRACE_MS = 30_000
"""How long after releasing a copy the scheduler ignores the pod's reports of it: a
heartbeat sent before the pod's unload finished still lists the model. If the unload
failed and the pod really holds it, the copy is adopted after this."""


def now_ms() -> int:
    return int(time.time() * 1000)


class LiveKeys:
    """What every key family shares; set up by `LiveState.__init__`."""

    redis: aioredis.Redis
    p: str   # the key prefix
    routes: RouteLog
    # the Lua scripts (store/scripts.py), registered once per client
    _reserve: Any
    _settle: Any
    _release: Any
    _adopt: Any
    _remove_pod: Any
    _upsert_pod: Any
    _age_usage: Any
    _reset_hits: Any
    _placement_snapshot: Any
    _set_draining: Any

    def k_pod(self, pod: str) -> str:
        return f"{self.p}:pod:{pod}"

    def k_released(self, pod: str) -> str:
        return f"{self.p}:released:{pod}"

    def k_alloc(self, pod: str) -> str:
        return f"{self.p}:alloc:{pod}"

    def k_copies(self, model: str) -> str:
        return f"{self.p}:copies:{model}"

    @property
    def k_view_seq(self) -> str:
        return f"{self.p}:view_seq"

    @property
    def k_heads(self) -> str:
        return f"{self.p}:heads"

    @property
    def k_mirror(self) -> str:
        return f"{self.p}:mirror"


def _run_id(server_info: dict[str, Any]) -> str:
    return str(server_info.get("run_id", ""))


def _pairs(flat: list[str]) -> dict[str, str]:
    """HGETALL's flat [field, value, ...] list (as a script returns it) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _copy(model_id: str, pod_id: str, value: str) -> CopyRecord:
    state, _, since = value.partition(":")
    return CopyRecord(model_id=model_id, pod_id=pod_id, state=state, since_ms=int(since or 0))
