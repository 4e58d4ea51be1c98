"""Placement's view of the cluster, kept in memory between decisions.

Reading every pod's view from Redis for each decision costs O(pods x copies): at 1,000
pods holding 100 copies each, ~3 s per cold load (`make bench-placement` prints it).
Instead each scheduler process keeps the views it read and a `ClusterIndex` of them,
and before a decision reads only each pod's view version and heartbeat (one HGETALL of
`ms:heads`, ~5 ms at 1,000 pods). Every Lua script that changes what placement sees of
a pod (a reservation, a settled or released copy, an adopted copy, new capacity, labels
or addresses, draining) gives that pod a new `view_version` in the same atomic step
(never one used before: store/live.py), so a pod whose version is unchanged has the view this
process holds, whichever replica changed the others; only those that changed are read
again.

What a version does not track is usage (requests counted per model, ~1/s from every
router): a held view ranks victims by the usage it had when its pod last changed. A
decision that evicts therefore reads the chosen pod again and decides once more on
that fresh view (`loading.Loader.place_and_load`), so victims are always chosen on
current usage; only the choice between candidate pods may use older usage.

Reservations stay atomic in Redis: a decision made on a view another replica has just
changed fails its reservation (no room, busy, exists), and the caller tries again with
the views read afresh.

May import: `meshserve.common`, `models`, `placement.index` and the live store. Never
imports the use cases or the transports.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshserve.common.coalesce import Coalesced
from meshserve.scheduler.models import CopyState, CopyView, PlacementConfig, PodView
from meshserve.scheduler.placement.index import ClusterIndex
from meshserve.scheduler.store.live import (
    LiveState,
    PlacementSnapshot,
    PodInfo,
    PodSnapshot,
    now_ms,
)


def pod_view(snap: PodSnapshot, usage: dict[str, tuple[float, int]]) -> PodView:
    """Placement's view of one pod from a snapshot (copies sorted by model id)."""
    pod = snap.pod
    copies = []
    for model, size in sorted(snap.allocations.items()):
        rec = snap.copies.get(model)
        if rec is None:
            continue
        hits, last_used = usage.get(model, (0.0, 0))  # hits aged to last_used
        copies.append(
            CopyView(
                model_id=model,
                size_bytes=size,
                state=CopyState.LOADING if rec.state == "loading" else CopyState.LOADED,
                last_used=max(last_used, rec.since_ms) / 1000,
                hits=float(hits),
                loaded_at=rec.since_ms / 1000,
            )
        )
    return PodView(
        pod_id=pod.pod_id,
        capacity_bytes=pod.capacity,
        allocated_bytes=pod.allocated,
        labels=pod.labels,
        loading=pod.loading,
        max_loading=pod.max_loading,
        healthy=True,
        draining=pod.draining,
        copies=tuple(copies),
    )


def pod_views(snapshot: PlacementSnapshot) -> list[tuple[PodInfo, PodView]]:
    return [(snap.pod, pod_view(snap, snapshot.usage)) for snap in snapshot.pods]


class ClusterViews:
    """The registered pods' infos and views as this process last read them, and a
    `ClusterIndex` of the live ones (latest heartbeat within `pod_timeout_seconds`).

    Owned by one event loop. Concurrent `refresh` calls share reads (`Coalesced`: each
    call returns after a read that began after it, and a burst of N calls costs at most
    two reads of the heads). `reread` may run beside a refresh (a pod may then briefly
    hold an older read: its version differs from the pod's, so the next refresh reads it
    again)."""

    def __init__(self, live: LiveState, *, pod_timeout_seconds: float, warm: PlacementConfig | None = None) -> None:
        self.live = live
        self.pod_timeout_ms = pod_timeout_seconds * 1000
        self.index = ClusterIndex(warm=warm)
        self._held: dict[str, tuple[PodInfo, PodView]] = {}   # pod -> as last read
        self._refresh = Coalesced(self._refresh_once)
        self.reads = 0                                        # reads of the heads so far

    def info(self, pod_id: str) -> PodInfo | None:
        """A registered pod's info as of the last read of its view (`heartbeat_ms` too: liveness
        is judged on the latest heartbeat, by `pods`)."""
        held = self._held.get(pod_id)
        return None if held is None else held[0]

    def pods(self, *, alive: bool) -> list[PodInfo]:
        """The registered pods' infos (see `info`), sorted by pod id; with `alive`, only those
        whose latest heartbeat is within the timeout."""
        held = self._held
        if not alive:
            return [held[p][0] for p in sorted(held)]
        index = self.index
        return [held[p][0] for p in sorted(held) if p in index]

    async def refresh(self) -> None:
        """Read what changed since the last read: the pods' view versions and heartbeats,
        then the views whose version moved. Returns after a read that began after the
        call, shared with concurrent callers."""
        await self._refresh()

    async def _refresh_once(self) -> None:
        self.reads += 1
        heads = await self.live.pod_heads()
        for pod_id in [p for p in self._held if p not in heads]:   # removed
            del self._held[pod_id]
            self.index.remove(pod_id)
        held = self._held
        stale = [p for p, (version, _) in heads.items() if p not in held or held[p][0].view_version != version]
        if stale:
            await self.reread(stale)
        oldest = now_ms() - self.pod_timeout_ms
        index = self.index
        for pod_id, (_, heartbeat) in heads.items():
            pod = held.get(pod_id)
            if pod is None:   # removed between the heads and its snapshot
                continue
            if heartbeat >= oldest:
                if pod_id not in index:
                    index.update(pod[1])
            elif pod_id in index:
                index.remove(pod_id)

    async def reread(self, pod_ids: Iterable[str]) -> None:
        """Read these pods' views again (whatever their version says); those in the index
        are replaced there. Which pods are in it is `refresh`'s call, on their heartbeats."""
        ids = list(pod_ids)
        if not ids:
            return
        # (a concurrent refresh may store an older read after a newer one: the version
        # held then differs from the pod's, and the next refresh reads it again)
        for info, view in pod_views(await self.live.placement_snapshot(ids)):
            self._held[info.pod_id] = (info, view)
            if info.pod_id in self.index:
                self.index.update(view)
