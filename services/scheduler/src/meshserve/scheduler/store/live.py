"""Live placement state in Redis: pods, copies, reservations, usage, failures, routes.

`LiveState` is the key families together, each in a module of its own: pods and
reservations (`pod_keys`), copies (`copy_keys`), usage and traffic (`usage_keys`), the
registry mirror (`mirror_keys`), failures (`failure_keys`), dropped pods' lost copies
(`lost_keys`), on `keys.LiveKeys`.

Everything here can be rebuilt: from the pullers' heartbeats (pods and the copies
they hold) and the Postgres registry (models, vmodels). Memory accounting per pod is
changed only by the Lua scripts of `store/scripts.py`, so two scheduler replicas can never
over-commit a pod or start the same first copy twice:

* `reserve`  — take `bytes` on a pod before loading (fails if it does not fit, the pod
               is at its loading limit, the copy exists, or with `exclusive` when the
               model has any copy at all);
* `settle`   — after the load, replace the reservation by the measured size;
* `release`  — give the bytes back (failed load, unload, eviction).

Those scripts keep three facts true between any two commands: a pod's `allocated` is
the sum of its `alloc` hash, every `alloc` entry has a copy entry (and back), and
`loading` counts the pod's `loading:` copies. Readers that need all three at once
(placement's pod views) read them with one script too (`placement_snapshot`), so they
never see a pod half-way through a reservation.

Key layout (prefix `ms` by default):
  ms:pods                 set of pod ids
  ms:pod:<pod>            hash: capacity, allocated, loading, max_loading, labels, addresses, ...,
                          view_version (new with every change placement would see but usage)
  ms:view_seq             the counter view versions come from
  ms:heads                hash: pod id -> "<view_version>:<heartbeat_ms>" of every registered pod
  ms:alloc:<pod>          hash: model id -> bytes held on that pod
  ms:copies:<model>       hash: pod id -> "loading:<ms>" | "loaded:<ms>"
  ms:awaiting_runtime     set of model ids whose load found no compatible pod (loaded when one comes)
  ms:models               set of registered model ids
  ms:vmodels              hash: vmodel id -> active model id
  ms:bounds               hash: model id -> "<min copies>:<max copies>"
  ms:mirror               hash: run_id (of the Redis server the mirror was written in), synced_ms,
                          syncs (writes of the mirror since this key was lost): the marker of the
                          mirror above (models, vmodels, bounds), written in `sync_registry`'s MULTI
  ms:released:<pod>       hash: model id -> ms its copy there was released (TTL RELEASED_GRACE_MS):
                          such a copy is not adopted from the pod's reports meanwhile
  ms:usage:<model>        hash: hits, last_used_ms
  ms:traffic:requests     counter: requests reported (all models), for shift detection
  ms:traffic:loads        counter: loads started by a miss
  ms:fail:<model>:<pod>   string (TTL = back-off): reason of the last failed load there
  ms:lost                 sorted set: model id -> ms its copy was lost with a dropped pod (`lost_keys`)
  ms:dropped:<pod>        string (TTL): the pod was dropped; its copies are checked when it comes back
  ms:routelog...          the route log (see routing/log.py): every route change, in order

May import: `meshserve.common`, `models`, the store wing, `routing.log`, redis. Never
imports the use cases or the transports.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from meshserve.common.errors import Unavailable
from meshserve.scheduler.models import (
    CopyRecord,
    PlacementSnapshot,
    PodInfo,
    PodSnapshot,
)
from meshserve.scheduler.routing.log import RouteLog
from meshserve.scheduler.store import scripts
from meshserve.scheduler.store.connection import connect
from meshserve.scheduler.store.copy_keys import CopyKeys
from meshserve.scheduler.store.failure_keys import FailureKeys
from meshserve.scheduler.store.keys import RELEASED_GRACE_MS, now_ms
from meshserve.scheduler.store.lost_keys import LostKeys
from meshserve.scheduler.store.mirror_keys import MirrorKeys
from meshserve.scheduler.store.pod_keys import PodKeys
from meshserve.scheduler.store.usage_keys import UsageKeys

__all__ = [
    "RELEASED_GRACE_MS", "CopyRecord", "LiveState", "PlacementSnapshot", "PodInfo", "PodSnapshot",
    "now_ms", "redis_unavailable",
]


class LiveState(PodKeys, CopyKeys, UsageKeys, MirrorKeys, FailureKeys, LostKeys):
    """The scheduler's live state in Redis (see the module's docstring for the keys)."""

    def __init__(self, url: str, *, prefix: str = "ms") -> None:
        self.redis: aioredis.Redis = connect(url, decode=True, max_connections=64)
        self.p = prefix
        self._reserve = self.redis.register_script(scripts.RESERVE)
        self._settle = self.redis.register_script(scripts.SETTLE)
        self._release = self.redis.register_script(scripts.RELEASE)
        self._adopt = self.redis.register_script(scripts.ADOPT)
        self._remove_pod = self.redis.register_script(scripts.REMOVE_POD)
        self._upsert_pod = self.redis.register_script(scripts.UPSERT_POD)
        self._age_usage = self.redis.register_script(scripts.AGE_USAGE)
        self._reset_hits = self.redis.register_script(scripts.RESET_HITS)
        self._placement_snapshot = self.redis.register_script(scripts.PLACEMENT_SNAPSHOT)
        self._set_draining = self.redis.register_script(scripts.SET_DRAINING)
        self.routes = RouteLog(url, prefix=prefix)

    async def close(self) -> None:
        await self.routes.close()
        await self.redis.aclose()

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as err:
            raise Unavailable(f"live state (Redis) is unavailable: {err}") from err


def redis_unavailable(err: BaseException) -> Unavailable | None:
    """Translate a Redis failure into the error callers see (503 / UNAVAILABLE)."""
    if isinstance(err, RedisError):
        return Unavailable(f"live state (Redis) is unavailable: {type(err).__name__}: {err}")
    return None
