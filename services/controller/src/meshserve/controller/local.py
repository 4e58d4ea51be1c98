"""Local mode's resource source: the scheduler's resource store (`/v1/resources`, what
`meshserve apply -f` writes) instead of a Kubernetes API server.

Owns: the HTTP client of that API (`LocalResourceApi`, the subset of `KubeApi` the reconciler
uses: list, get, status merge-patch, delete) and `LocalInformers`, which feeds every informer
from ONE listing and ONE long-poll watch (`/v1/resources:watch` covers all kinds), instead of one
stream per kind as against Kubernetes.

Protocol: list everything (one consistent resourceVersion), hand each informer its kind's
objects (synthetic ADDED/MODIFIED/DELETED as a Kubernetes re-list), then long-poll for changes
after that version; every event goes to the informer of its kind (namespaced kinds only for the
served namespace). Any failure (scheduler down, 5xx, bad body) -> capped, jittered back-off and a
fresh listing, so nothing missed while disconnected is lost. The store keeps tombstones, so a
watch from an old version never expires (no 410 here).

Never decides anything: the same `Reconciler` as in Kubernetes mode does.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from meshserve.controller.backoff import backoff_delay
from meshserve.controller.deployments import SPEC_HASH_ANNOTATION
from meshserve.controller.kube import JSON, KubeError, ObjectList, ResourceKind, WatchEvent
from meshserve.controller.reconcile import ActionKind, DeploymentAction, ObservedDeployment
from meshserve.controller.watcher import Informer

log = logging.getLogger(__name__)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, Mapping):
        return str(body.get("error") or body.get("detail") or body)
    return str(body)


class LocalResourceApi:
    """JSON verbs on the scheduler's `/v1/resources` API; failures raise `KubeError` (503 when
    the scheduler cannot be reached) so the informer/worker retry logic is the same as in Kubernetes."""

    def __init__(self, base_url: str, *, token: str | None = None, request_timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=request_timeout)

    async def close(self) -> None:
        await self._client.aclose()

    async def _json(self, method: str, path: str, **kwargs: Any) -> JSON:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise KubeError(503, f"resource store unreachable: {type(err).__name__}: {err}") from None
        if not 200 <= response.status_code <= 299:
            raise KubeError(response.status_code, _message(response))
        try:
            body = response.json()
        except ValueError as err:
            raise KubeError(502, f"resource store answered non-JSON: {err}") from None
        return body if isinstance(body, dict) else {}

    @staticmethod
    def _path(kind: ResourceKind, namespace: str, name: str) -> str:
        return f"/v1/resources/{kind.kind}/{namespace if kind.namespaced else '_'}/{name}"

    async def list_all(self) -> ObjectList:
        body = await self._json("GET", "/v1/resources")
        items = [dict(i) for i in body.get("items") or [] if isinstance(i, Mapping)]
        return ObjectList(items=items, resource_version=str(body.get("resourceVersion") or "0"))

    async def list(self, kind: ResourceKind, *, namespace: str = "", label_selector: str = "") -> ObjectList:
        params = {"kind": kind.kind}
        if kind.namespaced and namespace:
            params["namespace"] = namespace
        body = await self._json("GET", "/v1/resources", params=params)
        items = [dict(i) for i in body.get("items") or [] if isinstance(i, Mapping)]
        return ObjectList(items=items, resource_version=str(body.get("resourceVersion") or "0"))

    async def get(self, kind: ResourceKind, *, namespace: str = "", name: str) -> JSON | None:
        try:
            return await self._json("GET", self._path(kind, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def merge_patch(
        self, kind: ResourceKind, *, namespace: str = "", name: str, patch: Mapping[str, Any], subresource: str = ""
    ) -> JSON:
        if subresource != "status" or set(patch) - {"status"}:
            raise KubeError(405, "the local resource store takes status patches only")
        return await self._json("PATCH", f"{self._path(kind, namespace, name)}/status", json=dict(patch.get("status") or {}))

    async def delete(self, kind: ResourceKind, *, namespace: str = "", name: str) -> bool:
        try:
            await self._json("DELETE", self._path(kind, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def watch_all(self, *, resource_version: str, timeout_seconds: int) -> tuple[list[WatchEvent], str]:
        """Every change after `resource_version` (waits up to `timeout_seconds` for the first one)."""
        body = await self._json(
            "GET", "/v1/resources:watch",
            params={"resourceVersion": resource_version or "0", "timeoutSeconds": str(timeout_seconds)},
            timeout=httpx.Timeout(timeout_seconds + 30.0),
        )
        events = [
            WatchEvent(type=str(e.get("type") or ""), object=dict(e.get("object") or {}))
            for e in body.get("events") or [] if isinstance(e, Mapping)
        ]
        return events, str(body.get("resourceVersion") or resource_version)

    async def watch(
        self, kind: ResourceKind, *, namespace: str = "", resource_version: str, timeout_seconds: int,
        label_selector: str = "",
    ) -> AsyncIterator[WatchEvent]:
        """One long poll filtered to a kind (for a standalone `Informer`; `LocalInformers` shares one)."""
        events, _ = await self.watch_all(resource_version=resource_version, timeout_seconds=timeout_seconds)
        for event in events:
            if event.object.get("kind") == kind.kind and (
                not kind.namespaced or not namespace or (event.object.get("metadata") or {}).get("namespace") == namespace
            ):
                yield event


class LocalInformers:
    """Feeds all informers of a `Reconciler` from one listing + one watch (see module docstring)."""

    def __init__(
        self, api: LocalResourceApi, *, watch_timeout_seconds: int = 30, sleep: Any = asyncio.sleep
    ) -> None:
        self.api = api
        self.watch_timeout_seconds = watch_timeout_seconds
        self.resource_version = ""
        self._sleep = sleep

    def _route(self, informers: Mapping[str, Informer], obj: JSON) -> Informer | None:
        informer = informers.get(str(obj.get("kind") or ""))
        if informer is None:
            return None
        if informer.kind.namespaced and str((obj.get("metadata") or {}).get("namespace") or "") != informer.namespace:
            return None
        return informer

    async def relist(self, informers: Mapping[str, Informer], *, reason: str) -> None:
        listed = await self.api.list_all()
        by_kind: dict[str, list[JSON]] = {kind: [] for kind in informers}
        for obj in listed.items:
            informer = self._route(informers, obj)
            if informer is not None:
                by_kind[informer.kind.kind].append(obj)
        for kind, informer in informers.items():
            informer.replace(by_kind[kind], listed.resource_version, reason=reason)
        self.resource_version = listed.resource_version

    async def run(self, informers: Mapping[str, Informer]) -> None:
        """Forever (cancel to stop)."""
        need_list, reason, attempt = True, "start", 0
        while True:
            try:
                if need_list:
                    await self.relist(informers, reason=reason)
                    need_list = False
                events, version = await self.api.watch_all(
                    resource_version=self.resource_version, timeout_seconds=self.watch_timeout_seconds
                )
                for event in events:
                    informer = self._route(informers, event.object)
                    if informer is not None:
                        informer.apply_event(event.type, event.object)
                self.resource_version = version
                attempt = 0
            except (KubeError, ValueError) as err:
                delay = backoff_delay(attempt=attempt, rand=random.random())
                attempt += 1
                need_list, reason = True, "error"
                log.warning("local resource watch failed (%s); re-listing in %.2fs", err, delay)
                await self._sleep(delay)


class RecordingRuntimes:
    """RuntimeBackend for `runtime_provider=static`: someone else runs the runtime pods (docker
    compose); remember what the plan wanted so it converges, start and stop nothing."""

    def __init__(self) -> None:
        self._observed: dict[str, ObservedDeployment] = {}

    def observed(self) -> dict[str, ObservedDeployment]:
        return dict(self._observed)

    async def apply(self, action: DeploymentAction, *, namespace: str) -> None:
        if action.kind is ActionKind.DELETE:
            self._observed.pop(action.name, None)
            return
        current = self._observed.get(action.name)
        spec_hash = current.spec_hash if current is not None else ""
        if action.manifest is not None:
            spec_hash = str(action.manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION])
        self._observed[action.name] = ObservedDeployment(name=action.name, replicas=action.replicas, spec_hash=spec_hash)

    async def close(self) -> None:
        return None
