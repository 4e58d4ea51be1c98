"""The controller against the API server's consistency rules: conflicts, expired watches, bookmarks.

* a write from a stale resourceVersion (409, or a finalizer patch's failed `test`) is retried at
  once from a fresh read, and what the other writer wrote is not lost;
* a watch that expired (410) re-lists and picks up every change it missed, and nothing else;
* bookmarks move the informer's resourceVersion, so a watch re-opened after the history was
  compacted resumes instead of re-listing.

Against the fake API server process (see conftest) and the scheduler gRPC double.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from meshserve.controller import kube
from meshserve.controller.finalizers import FINALIZER
from meshserve.controller.kube import JSON, KubeApi, ResourceKind, api_client_from
from meshserve.controller.watcher import Informer

from .conftest import (
    CONTROLLER_USER,
    NAMESPACE,
    FakeKube,
    Running,
    SchedulerFixture,
    checked,
    eventually,
    fakekube_at,
)
from .test_kube_controller import CORE, ISVCS, isvc, setup_namespace, wait_ready

pytestmark = pytest.mark.timeout(60)

MERGE = "application/merge-patch+json"


async def _status(kube: FakeKube, name: str) -> dict[str, Any]:
    obj = await kube.get(f"{ISVCS}/{name}") or {}
    return dict((obj.get("status") or {}).get("modelStatus") or {})


async def _loaded(kube: FakeKube, name: str) -> bool:
    return (await _status(kube, name)).get("states", {}).get("activeModelState") == "Loaded"


async def _controller_requests(kube: FakeKube) -> list[dict[str, Any]]:
    return [r for r in await kube.get("/_control/requests") if r.get("user") == CONTROLLER_USER]


async def test_a_status_write_that_meets_another_status_writer_is_redone_from_a_fresh_read(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    """The other writer changes only `.status` (no spec change: no watch event enqueues the CR
    again), so a 409 dropped, or retried without reading the CR again, leaves its status there."""
    await setup_namespace(fakekube)
    await wait_ready(controller)
    path = f"{ISVCS}/racy/status"
    other = {"status": {"modelStatus": {"transitionStatus": "InProgress", "states": {"activeModelState": "Loading"}}}}
    await fakekube.request("POST", "/_control/conflict", {"method": "PATCH", "path": path, "times": 1, "patch": other})
    await fakekube.apply(ISVCS, isvc("racy"))
    await eventually(lambda: _loaded(fakekube, "racy"), what="status Loaded after the conflict")

    log = await _controller_requests(fakekube)
    writes = [(i, r["code"]) for i, r in enumerate(log) if r["method"] == "PATCH" and r["path"] == path]
    assert [code for _, code in writes][:2] == [409, 200], writes
    conflict_at, retried_at = writes[0][0], writes[1][0]
    reads = [r for r in log[conflict_at:retried_at] if r["method"] == "GET" and r["path"] == f"{ISVCS}/racy"]
    assert reads, "the status write was retried without reading the InferenceService again"


async def test_a_finalizer_patch_from_a_stale_view_is_redone_from_a_fresh_read(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await setup_namespace(fakekube)
    await wait_ready(controller)
    path = f"{ISVCS}/held"
    await fakekube.request("POST", "/_control/conflict", {"method": "PATCH", "path": path, "times": 1})
    await fakekube.apply(ISVCS, isvc("held"))
    await eventually(lambda: _loaded(fakekube, "held"), what="status Loaded after the conflict")
    obj = await fakekube.get(path)
    assert obj["metadata"]["finalizers"] == [FINALIZER]
    assert "fakekube/concurrent-write" in obj["metadata"]["annotations"]      # the other write stands

    log = await _controller_requests(fakekube)
    patches = [(i, r["code"]) for i, r in enumerate(log) if r["method"] == "PATCH" and r["path"] == path]
    assert [code for _, code in patches] == [422, 200], patches              # the JSON patch's `test` failed once
    failed_at, retried_at = patches[0][0], patches[1][0]
    assert [r for r in log[failed_at:retried_at] if r["method"] == "GET" and r["path"] == path]
    assert "held" in scheduler.servicer.vmodels


async def test_an_expired_watch_relists_and_catches_up_without_losing_or_repeating_work(
    fakekube: FakeKube, scheduler: SchedulerFixture, controller: Running
) -> None:
    await setup_namespace(fakekube)
    await wait_ready(controller)
    for name in ("keep", "changed", "gone"):
        await fakekube.apply(ISVCS, isvc(name))
    await fakekube.apply(ISVCS, isvc("invalid-gone", storageUri="s3://models/sklearn/model.joblib"))
    for name in ("keep", "changed", "gone"):
        await eventually(lambda n=name: _loaded(fakekube, n), what=f"{name} Loaded")
    await eventually(lambda: _invalid(fakekube, "invalid-gone"), what="invalid-gone InvalidSpec")
    informers = controller.reconciler.informers
    relists = {kind: i.relists for kind, i in informers.items()}
    sets_of_keep = len([r for r in scheduler.servicer.set_requests if r.vmodel_id == "keep"])

    async def all_stalled() -> bool:   # every informer's watch is open, and from now on gets nothing
        stalled = await fakekube.request("POST", "/_control/stall")
        return bool(stalled["stalledWatches"] >= len(informers))
    await eventually(all_stalled, what="every informer watching")
    await fakekube.request("DELETE", f"{ISVCS}/gone")              # held by the finalizer: marked
    await fakekube.request("DELETE", f"{ISVCS}/invalid-gone")      # no finalizer: gone at once
    await fakekube.request("PATCH", f"{ISVCS}/changed", {"spec": {"predictor": {"model": {"storage": {"path": "sklearn/v2.joblib"}}}}},
                           content_type=MERGE)
    await fakekube.apply(ISVCS, isvc("fresh"))
    isvcs = informers["InferenceService"]
    assert isvcs.get(NAMESPACE, "fresh") is None and isvcs.get(NAMESPACE, "invalid-gone") is not None  # missed

    await fakekube.request("POST", "/_control/expire")             # 410 on every open watch
    await eventually(lambda: _has(scheduler.servicer.vmodels, "fresh"), what="fresh registered after the re-list")

    async def changed_registered() -> bool:
        req = scheduler.servicer.vmodels.get("changed")
        return req is not None and req.model_info.storage_path == "sklearn/v2.joblib"
    await eventually(changed_registered, what="changed registered with its new path")

    async def gone() -> bool:
        return await fakekube.get(f"{ISVCS}/gone") is None and "gone" not in scheduler.servicer.vmodels
    await eventually(gone, what="gone unregistered and its finalizer released")
    await eventually(lambda: _has(set(scheduler.servicer.deleted), ("invalid-gone", "isvc")),
                     what="DeleteVModel for the CR deleted outright while the watch was down")
    await eventually(lambda: _loaded(fakekube, "fresh"), what="fresh Loaded")
    assert {kind: i.relists for kind, i in informers.items()} == {kind: n + 1 for kind, n in relists.items()}
    assert len([r for r in scheduler.servicer.set_requests if r.vmodel_id == "keep"]) == sets_of_keep


async def test_bookmarks_move_the_resource_version_so_a_watch_resumes_after_compaction(tmp_path: Path) -> None:
    async with checked(await fakekube_at(tmp_path, bookmark_interval=0.1)) as fake:
        api_client = await api_client_from(str(fake.kubeconfig))
        seen: list[tuple[str, str]] = []

        def sink(kind: ResourceKind, event_type: str, new: JSON, old: JSON | None) -> None:
            seen.append((event_type, str((new.get("metadata") or {}).get("name"))))
        informer = Informer(api=KubeApi(api_client, request_timeout=5), kind=kube.CONFIG_MAP, namespace=NAMESPACE,
                            on_event=sink, watch_timeout_seconds=1)
        task = asyncio.create_task(informer.run(), name="informer")
        try:
            await eventually(lambda: _flag(informer.synced.is_set()), what="listed")
            listed_at = informer.resource_version
            for i in range(3):                        # writes the ConfigMap watch does not see
                await fake.apply(f"{CORE}/secrets", {"metadata": {"name": f"s{i}"}, "data": {}})
            now = (await fake.get(f"{CORE}/secrets"))["metadata"]["resourceVersion"]
            assert int(now) > int(listed_at)
            await eventually(lambda: _flag(informer.resource_version == now), what="a bookmark carried the new rv")
            await fake.request("POST", "/_control/compact")            # listed_at is history now

            async def rewatched() -> bool:          # the 1 s watch ended and was opened again, from `now`
                log = await fake.get("/_control/requests")
                return any(r["query"].get("watch") == "true" and r["query"].get("resourceVersion") == now
                           and r["path"] == f"{CORE}/configmaps" for r in log)
            await eventually(rewatched, what="the watch re-opened from the bookmark's rv")
            await fake.apply(f"{CORE}/configmaps", {"metadata": {"name": "after"}, "data": {}})
            await eventually(lambda: _flag(("ADDED", "after") in seen), what="the resumed watch delivered")
            assert informer.relists == 1, "re-listed: the watch resumed from a compacted resourceVersion"
            assert seen == [("ADDED", "after")]                        # bookmarks are no events
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await api_client.close()


async def _invalid(kube: FakeKube, name: str) -> bool:
    return (await _status(kube, name)).get("transitionStatus") == "InvalidSpec"


async def _has(container: Any, item: Any) -> bool:
    return item in container


async def _flag(value: bool) -> bool:
    return value
