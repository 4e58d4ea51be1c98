"""Thin JSON client for the Kubernetes API over kubernetes-asyncio's ApiClient.

Owns: raw JSON requests through
`ApiClient.call_api(..., _preload_content=False)` so every object stays a plain dict (the pure
modules take Mappings, never generated model classes), watch streams decoded line by line, and
the mapping of HTTP failures onto `KubeError` / `WatchExpired`.

Never: decides anything, caches anything, retries anything (the watcher and the workers own
retries with back-off).

Invariants:
* `watch()` yields only ADDED/MODIFIED/DELETED/BOOKMARK events; an in-stream ERROR event with
  code 410 and an HTTP 410 both raise `WatchExpired` (the caller must re-list); any other ERROR
  raises `KubeError`.
* A 409 whose Status reason is `Conflict` (a write from a stale resourceVersion) raises
  `KubeConflict`; the 409 `AlreadyExists` of a create stays a plain `KubeError`.
* Every request carries a client-side timeout; a watch's is its server timeout plus a margin.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from meshserve.controller.kinds import (  # re-exported: the client's callers name kinds as kube.X
    CLUSTER_SERVING_RUNTIME,
    CONFIG_MAP,
    DEPLOYMENT,
    EVENT,
    INFERENCE_SERVICE,
    JSON,
    NAMESPACE,
    PREDICTOR,
    SECRET,
    SERVICE,
    SERVING_RUNTIME,
    ResourceKind,
)

__all__ = [
    "CLUSTER_SERVING_RUNTIME",
    "CONFIG_MAP",
    "DEPLOYMENT",
    "EVENT",
    "INFERENCE_SERVICE",
    "JSON",
    "NAMESPACE",
    "PREDICTOR",
    "SECRET",
    "SERVICE",
    "SERVING_RUNTIME",
    "KubeApi",
    "KubeConflict",
    "KubeError",
    "ObjectList",
    "ResourceKind",
    "WatchEvent",
    "WatchExpired",
]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class KubeError(Exception):
    """A non-2xx answer (or an in-stream ERROR); `status` is the HTTP code or the Status code,
    `reason` the Status reason (`NotFound`, `Conflict`, `AlreadyExists`, `Invalid`, ...) when given."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.reason = reason


class WatchExpired(KubeError):
    """410 Gone: the resourceVersion is older than the server's history; re-list."""


class KubeConflict(KubeError):
    """409 Conflict: the object changed since the resourceVersion the write was made from; read it again."""


@dataclass(frozen=True)
class WatchEvent:
    type: str
    object: JSON


@dataclass(frozen=True)
class ObjectList:
    items: list[JSON]
    resource_version: str


async def api_client_from(kubeconfig: str | None) -> k8s_client.ApiClient:
    """An ApiClient for a kubeconfig file, or the in-cluster service account when None."""
    configuration = k8s_client.Configuration()
    if kubeconfig:
        await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return k8s_client.ApiClient(configuration)


def _status_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:500]
    if isinstance(body, Mapping):
        return str(body.get("message") or body.get("reason") or body)
    return str(body)


def _status_reason(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return ""
    return str(body.get("reason") or "") if isinstance(body, Mapping) else ""


def _error(status: int, raw: bytes) -> KubeError:
    reason = _status_reason(raw)
    if status == 410:
        return WatchExpired(status, _status_message(raw), reason)
    if status == 409 and reason == "Conflict":
        return KubeConflict(status, _status_message(raw), reason)
    return KubeError(status, _status_message(raw), reason)


class KubeApi:
    """Raw JSON verbs over one ApiClient (owned by the caller)."""

    def __init__(self, api_client: k8s_client.ApiClient, *, request_timeout: float = 30.0) -> None:
        self._client = api_client
        self._timeout = request_timeout

    async def _call(
        self, method: str, path: str, *, query: list[tuple[str, str]] | None = None, body: Any = None,
        content_type: str = "application/json", request_timeout: float | None = None,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        response = await self._client.call_api(
            path, method, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"], _preload_content=False,
            _request_timeout=request_timeout if request_timeout is not None else self._timeout,
        )
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> JSON:
        response = await self._call(method, path, **kwargs)
        try:
            raw = await response.read()
        finally:
            response.release()
        if not 200 <= response.status <= 299:
            raise _error(response.status, raw)
        body = json.loads(raw) if raw else {}
        return body if isinstance(body, dict) else {}

    async def list(
        self, kind: ResourceKind, *, namespace: str = "", label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        query = [("labelSelector", label_selector)] if label_selector else []
        if field_selector:
            query.append(("fieldSelector", field_selector))
        body = await self._json("GET", kind.path(namespace=namespace), query=query)
        items = [dict(i) for i in body.get("items") or [] if isinstance(i, Mapping)]
        for item in items:   # list items carry no kind/apiVersion on the real server
            item.setdefault("kind", kind.kind)
            item.setdefault("apiVersion", kind.api_version)
        return ObjectList(items=items, resource_version=str((body.get("metadata") or {}).get("resourceVersion") or ""))

    async def get(self, kind: ResourceKind, *, namespace: str = "", name: str) -> JSON | None:
        try:
            return await self._json("GET", kind.path(namespace=namespace, name=name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def create(self, kind: ResourceKind, *, namespace: str = "", body: Mapping[str, Any]) -> JSON:
        return await self._json("POST", kind.path(namespace=namespace), body=dict(body))

    async def replace(self, kind: ResourceKind, *, namespace: str = "", name: str, body: Mapping[str, Any]) -> JSON:
        return await self._json("PUT", kind.path(namespace=namespace, name=name), body=dict(body))

    async def merge_patch(
        self, kind: ResourceKind, *, namespace: str = "", name: str, patch: Mapping[str, Any], subresource: str = ""
    ) -> JSON:
        return await self._json(
            "PATCH", kind.path(namespace=namespace, name=name, subresource=subresource), body=dict(patch),
            content_type=MERGE_PATCH,
        )

    async def json_patch(
        self, kind: ResourceKind, *, namespace: str = "", name: str, ops: Sequence[JSON], subresource: str = ""
    ) -> JSON:
        return await self._json(
            "PATCH", kind.path(namespace=namespace, name=name, subresource=subresource), body=[dict(o) for o in ops], content_type=JSON_PATCH
        )

    async def delete(self, kind: ResourceKind, *, namespace: str = "", name: str) -> bool:
        """False when the object was already gone."""
        try:
            await self._json("DELETE", kind.path(namespace=namespace, name=name))
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def watch(
        self, kind: ResourceKind, *, namespace: str = "", resource_version: str, timeout_seconds: int,
        label_selector: str = "", field_selector: str = "",
    ) -> AsyncIterator[WatchEvent]:
        """Events after `resource_version` until the server closes the stream (see module invariants)."""
        query = [
            ("watch", "true"), ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        response = await self._call("GET", kind.path(namespace=namespace), query=query, request_timeout=timeout_seconds + 30)
        try:
            if not 200 <= response.status <= 299:
                raw = await response.read()
                raise _error(response.status, raw)
            while True:
                line = await response.content.readline()
                if not line:
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                etype = str(event.get("type") or "")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    code = int(obj.get("code") or 500)
                    cls = WatchExpired if code == 410 else KubeError
                    raise cls(code, str(obj.get("message") or obj.get("reason") or "watch error"), str(obj.get("reason") or ""))
                yield WatchEvent(type=etype, object=obj)
        finally:
            response.release()
