"""Pods as the scheduler sees them: their heartbeats, their liveness and their leaving.

A pod reports itself (capacity, addresses, the copies it holds) on every heartbeat; this
module writes the report into live state, adopts the copies live state does not know
(after a Redis restart, say) and drops the ones the pod no longer lists. It also removes
pods that stopped reporting, drops a pod a router found unreachable (or hung: its probe
unanswered while its heartbeat is late), and keeps the
registry's `runtimes` rows in line with the live pods. It never places or loads copies:
moving copies off a pod is `scaler.CopyScaler.drain_pod`'s job. Before copies are
adopted the registry mirror is checked (`store.mirror.RegistryMirror.before_adopting`).

Invariants:
* a pod is alive while its last heartbeat is younger than `pod_timeout_seconds`; a dead
  pod is removed with its copies, and the removal is recorded as a `pod-lost` event;
* a pod whose heartbeat is late (`pod_probe_after_seconds`) is probed each leader pass: a
  refused connection or a model server not ready is a dead pod, dropped at once; a probe
  that goes unanswered is a hung pod, dropped once its heartbeat is
  `pod_unresponsive_seconds` old; a pod that answers READY is left alone until the timeout;
* a dropped pod's copies are listed as lost (re-placed by the leader, `scaler`), and the
  pod is marked dropped: when that pod reports again (a hung pod resumed), each copy it
  still holds is adopted only if the model has no copy elsewhere by then, else unloaded
  there (never two copies where one was re-placed, never a copy the scheduler ignores);
* a `loading` reservation older than a live load can be (its scheduler replica died
  mid-load) is ended at the pod's next heartbeat: settled when the pod holds the model,
  released when not;
* a heartbeat never fails because Postgres is down: registry reads here treat
  `Unavailable` as "no record" (adoption skips the model) or skip the write.

May import: `meshserve.common`, the store wing (with the mirror), `pullers`, `events`,
`sizing`, `models`. Never imports `loading`, `copies`, `scaler`, `vmodels`, `service` or
the transports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import grpc

from meshserve.common.errors import Unavailable
from meshserve.common.proto.meshserve.v1 import runtime_pb2
from meshserve.scheduler.events import EventLog
from meshserve.scheduler.pullers import PullerClients
from meshserve.scheduler.settings import SchedulerSettings
from meshserve.scheduler.sizing import DEFAULT_MODEL_SIZE, describe_runtimes, known_size
from meshserve.scheduler.store.live import LiveState, PodInfo, now_ms
from meshserve.scheduler.store.mirror import RegistryMirror
from meshserve.scheduler.store.registry import ModelRecord, Registry

log = logging.getLogger(__name__)


class Pods:
    """Heartbeats, liveness and removal of the pods; the runtime rows they describe."""

    def __init__(
        self,
        *,
        settings: SchedulerSettings,
        registry: Registry,
        live: LiveState,
        pullers: PullerClients,
        mirror: RegistryMirror,
        events: EventLog,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.live = live
        self.pullers = pullers
        self.mirror = mirror
        self.events = events
        self._unloads: set[asyncio.Task[None]] = set()   # unloads of duplicates a returning pod holds

    async def check_suspect(self, pod_id: str, model_id: str) -> None:
        """Ask the puller of a pod whose copy of `model_id` failed a caller (or has not
        answered it): drop the pod when it is dead (connection refused, model server not
        ready) or hung (no answer within `pod_probe_timeout_seconds` while its heartbeat is
        late, `pod_probe_after_seconds`: a stopped pod, whose kernel still accepts the
        connection); the copy alone when the pod does not hold it. A pod that is slow to
        answer but heartbeats on time is left alone (a busy puller, not a hung pod)."""
        pod = await self.live.pod(pod_id)
        if pod is None:
            return
        verdict, why, status = await self._probe_status(pod)
        if verdict == "dead":
            await self._drop_pod(pod_id, why=f"reported unreachable by a router; {why}")
            return
        if verdict == "hung":
            current = await self.live.pod(pod_id)
            age = (now_ms() - current.heartbeat_ms) / 1000 if current is not None else 0.0
            if current is not None and current.heartbeat_ms == pod.heartbeat_ms and age > self.settings.pod_probe_after_seconds:
                await self._drop_pod(pod_id, why=f"reported by a router; no heartbeat for {age:.1f}s and {why}")
            return
        if status is not None and model_id not in status.loaded_model_ids and await self.live.release(model_id=model_id, pod_id=pod_id):
            await self.events.record("dropped", model_id=model_id, pod_id=pod_id, message="copy missing on the pod")

    async def pod_leaving(self, pod_id: str) -> None:
        if await self.live.pod(pod_id) is not None:
            await self._drop_pod(pod_id, why="pod is shutting down")

    async def _drop_pod(self, pod_id: str, *, why: str) -> None:
        models = await self.live.remove_pod(pod_id)
        await self.live.mark_dropped(pod_id, models)
        # a failure there said "not on this pod": a pod of that name later is another process
        # (a load it was killed in was the pod's fault; a bad model is refused by the
        # registry's model-level failure anyway)
        await self.live.clear_pod_failures(pod_id)
        await self.events.record("pod-lost", pod_id=pod_id, message=f"{why}; dropped {len(models)} copies")

    def alive(self, pod: PodInfo) -> bool:
        return now_ms() - pod.heartbeat_ms <= self.settings.pod_timeout_seconds * 1000

    async def report_pod(self, fields: dict[str, Any], loaded_model_ids: Sequence[str]) -> None:
        pod_id = str(fields["pod_id"])
        body = {k: v for k, v in fields.items() if k != "pod_id"}
        body["heartbeat_ms"] = now_ms()
        is_new = await self.live.upsert_pod(pod_id=pod_id, fields=body)
        held = await self.live.pod_allocations(pod_id)
        reported = set(loaded_model_ids)
        returned = False
        if is_new:
            log.info("pod %s registered (capacity %s bytes)", pod_id, fields.get("capacity"))
            await self.live.clear_pod_failures(pod_id)  # a new process, whatever the old one failed at
            await self.events.record("pod-registered", pod_id=pod_id, message=f"capacity {fields.get('capacity')}")
            returned = await self.live.take_dropped(pod_id)
        unknown = sorted(reported - set(held))
        if unknown:
            # copies the pod holds that live state does not know (e.g. after a Redis restart)
            await self.mirror.before_adopting(pod_id)
        if returned and unknown:
            unknown = await self._keep_unreplaced(pod_id, str(fields["management_address"]), unknown)
        for model in unknown:
            record = await self.safe_find(model)
            if record is None:
                continue
            size = known_size(record) or int(fields.get("default_size", DEFAULT_MODEL_SIZE))
            await self.live.adopt(model_id=model, pod_id=pod_id, size=size)
        grace = 3 * self.settings.heartbeat_interval_seconds * 1000
        copies = await self.live.copies_many(sorted(set(held) - reported))
        for model, recs in copies.items():
            for rec in recs:
                if rec.pod_id == pod_id and rec.state == "loaded" and now_ms() - rec.since_ms > grace:
                    await self.live.release(model_id=model, pod_id=pod_id)
                    await self.events.record("dropped", model_id=model, pod_id=pod_id, message="pod no longer reports it")
        if held and await self.live.loading_count(pod_id):
            await self._end_abandoned_loads(pod_id, held, reported)

    async def _end_abandoned_loads(self, pod_id: str, held: dict[str, int], reported: set[str]) -> None:
        """Loads on this pod older than any live load can be (`load_timeout_seconds` and three
        heartbeats): the scheduler replica that started them died before it settled them.
        A copy the pod reports is settled at its reserved bytes (routed); the others are
        released, so no reservation outlives its owner and the model can be loaded again."""
        stale_ms = (self.settings.load_timeout_seconds + 3 * self.settings.heartbeat_interval_seconds) * 1000
        copies = await self.live.copies_many(sorted(held))
        for model, recs in copies.items():
            for rec in recs:
                if rec.pod_id != pod_id or rec.state != "loading" or now_ms() - rec.since_ms <= stale_ms:
                    continue
                if model in reported:
                    if await self.live.settle(model_id=model, pod_id=pod_id, size=held[model]):
                        await self.events.record(
                            "adopted", model_id=model, pod_id=pod_id, message="a load whose scheduler replica died finished on the pod"
                        )
                elif await self.live.release(model_id=model, pod_id=pod_id):
                    await self.events.record(
                        "dropped", model_id=model, pod_id=pod_id, message="a load whose scheduler replica died never finished"
                    )

    async def _keep_unreplaced(self, pod_id: str, management_address: str, models: Sequence[str]) -> list[str]:
        """A dropped pod is back with copies (it was hung, not dead): the ones whose model has
        a copy elsewhere by now are unloaded there (in the background; marked released so the
        pod's reports meanwhile do not adopt them); returns the others, to adopt."""
        copies = await self.live.copies_many(models)
        duplicates = [m for m in models if any(c.pod_id != pod_id for c in copies.get(m, []))]
        if not duplicates:
            return list(models)
        await self.live.keep_released(pod_id, duplicates)
        for model in duplicates:
            await self.events.record(
                "dropped", model_id=model, pod_id=pod_id, message="pod came back after it was dropped; the model was re-placed meanwhile"
            )
        task = asyncio.create_task(self._unload_on(management_address, duplicates), name=f"unload duplicates on {pod_id}")
        self._unloads.add(task)
        task.add_done_callback(self._unloads.discard)
        return [m for m in models if m not in set(duplicates)]

    async def unloads_done(self) -> None:
        """Return when the unloads of duplicates started so far have run (tests, shutdown)."""
        await asyncio.gather(*list(self._unloads), return_exceptions=True)

    async def _unload_on(self, management_address: str, models: Sequence[str]) -> None:
        stub = self.pullers.stub(management_address)
        for model in models:
            try:
                await stub.UnloadModel(runtime_pb2.UnloadModelRequest(model_id=model), timeout=30)
            except grpc.aio.AioRpcError as err:
                log.warning("unload of the duplicate %s on %s failed: %s", model, management_address, err.details())

    async def probe(self, pod: PodInfo) -> tuple[str, str]:
        """Ask a pod's puller how it is: ("alive" | "dead" | "hung", why). Dead: the
        connection is refused (or fails otherwise) or its model server is not ready; hung:
        no answer within `pod_probe_timeout_seconds` (a stopped process still accepts the
        connection)."""
        verdict, why, _ = await self._probe_status(pod)
        return verdict, why

    async def _probe_status(self, pod: PodInfo) -> tuple[str, str, runtime_pb2.RuntimeStatusResponse | None]:
        """`probe`, with the puller's answer when it answered READY."""
        try:
            status = await self.pullers.stub(pod.management_address).RuntimeStatus(
                runtime_pb2.RuntimeStatusRequest(), timeout=self.settings.pod_probe_timeout_seconds
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "hung", f"its puller did not answer within {self.settings.pod_probe_timeout_seconds:g}s", None
            return "dead", f"its puller: {err.code().name}", None
        if status.status != runtime_pb2.RuntimeStatusResponse.READY:
            return "dead", "its model server is not ready", None
        return "alive", "", status

    async def safe_find(self, model_id: str) -> ModelRecord | None:
        """The model's registry record; None when it is not registered or Postgres is down."""
        try:
            return await self.registry.find_model(model_id)
        except Unavailable:
            return None

    async def sync_runtimes(self) -> list[str]:
        """Leader duty: make the registry's `runtimes` rows say what the live pods say
        (labels, default model size, capacity, pod count); returns the names written.

        Only rows that differ are written, so a steady cluster costs one small SELECT per
        pass. A runtime whose pods are all gone keeps its row with `pods = 0`. Best-effort:
        with Postgres down nothing is written (routing and placement go on) and a later
        pass repairs the rows."""
        current = describe_runtimes([p for p in await self.live.pods() if self.alive(p)])
        try:
            stored = {r.name: r for r in (await self.registry.list_runtimes(limit=100_000))[0]}
        except Unavailable as err:
            log.warning("runtime rows not synced: %s", err.message)
            return []
        for name, record in stored.items():
            current.setdefault(name, dataclasses.replace(record, pods=0))
        written = []
        for name, record in sorted(current.items()):
            if stored.get(name) == record:
                continue
            try:
                await self.registry.upsert_runtime(record)
            except Unavailable as err:
                log.warning("runtime rows not synced: %s", err.message)
                break
            written.append(name)
        return written

    async def remove_dead_pods(self) -> list[str]:
        """Leader duty (each pass): drop the pods that stopped reporting; returns their ids.

        Past `pod_timeout_seconds` without a heartbeat a pod is dropped whatever it is; a pod
        late by `pod_probe_after_seconds` is probed (all late pods at once) and dropped when
        the probe finds it dead, or hung with a heartbeat `pod_unresponsive_seconds` old."""
        s = self.settings
        removed, late = [], []
        for pod in await self.live.pods():
            age = (now_ms() - pod.heartbeat_ms) / 1000
            if age > s.pod_timeout_seconds:
                removed.append(pod.pod_id)
                await self._drop_pod(pod.pod_id, why=f"no heartbeat for {s.pod_timeout_seconds:.0f}s")
            elif age > s.pod_probe_after_seconds:
                late.append(pod)
        verdicts = await asyncio.gather(*(self.probe(p) for p in late))
        for pod, (verdict, why) in zip(late, verdicts, strict=True):
            current = await self.live.pod(pod.pod_id)
            if current is None or current.heartbeat_ms != pod.heartbeat_ms:
                continue   # reported meanwhile (or dropped by another path)
            age = (now_ms() - pod.heartbeat_ms) / 1000
            if verdict == "dead" or (verdict == "hung" and age > s.pod_unresponsive_seconds):
                removed.append(pod.pod_id)
                await self._drop_pod(pod.pod_id, why=f"no heartbeat for {age:.1f}s and {why}")
        return removed
