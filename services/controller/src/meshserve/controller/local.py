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

The `storage-config` Secret in local mode (`StorageSecretSync`, run by the local runtime
backend, which plays the kubelet that mounts the Secret into its pods): the store keeps no
Secret kind, so `meshserve apply` keeps a Secret as a *carrier* ConfigMap
`local-secret.<name>` (label `meshserve.io/local-secret`, the Secret's `data` base64-encoded
as in a Secret, `stringData` folded in: `secret_carrier`). The sync lists and long-polls the
store like the informers, and writes the keys of the Secret named by the config's
`storageSecretName` into the runtime pods' storage-config folder, one file per key, each
written to a temporary file and renamed (a puller reading a key sees the old or the new
value, never half of one); keys removed from the Secret are removed, files it did not write
(the local stack's own keys) are left alone. Values are never logged; a key whose name is not
a file name is skipped and named in the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import random
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from meshserve.common.backoff import backoff_delay
from meshserve.common.labels import LOCAL_SECRET_LABEL
from meshserve.controller.deployments import SPEC_HASH_ANNOTATION
from meshserve.controller.kube import JSON, KubeError, ObjectList, ResourceKind, WatchEvent
from meshserve.controller.reconcile import ActionKind, DeploymentAction, ObservedDeployment
from meshserve.controller.serving_config import ConfigError, parse_configmap_data
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
        # the controller writes the storage-config files: it reads the carried Secret's values
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=request_timeout, params={"secretValues": "true"}
        )

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


# --- the storage-config Secret in local mode ------------------------------------------------------

CARRIER_PREFIX = "local-secret."
CARRIER_LABEL = LOCAL_SECRET_LABEL
SECRET_NAME_ANNOTATION = "meshserve.io/secret-name"
KEY_NAME = re.compile(r"^[-._a-zA-Z0-9]+$")
"""A Secret data key (Kubernetes' rule), which is also a safe file name unless it is `.`/`..`."""
MANAGED_KEYS_FILE = ".meshserve-secret-keys.json"


def valid_key_name(key: str) -> bool:
    return bool(KEY_NAME.match(key)) and key not in (".", "..") and len(key) <= 253


def carrier_name(secret_name: str) -> str:
    return f"{CARRIER_PREFIX}{secret_name}"


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's keys as base64 values: `data` as given, `stringData` encoded over it (the API
    server's rule: stringData wins). Values must be strings (checked by the caller)."""
    data = {str(k): str(v) for k, v in (secret.get("data") or {}).items()}
    for key, value in (secret.get("stringData") or {}).items():
        data[str(key)] = base64.b64encode(str(value).encode()).decode()
    return data


def secret_carrier(secret: Mapping[str, Any], *, namespace: str) -> dict[str, Any]:
    """The ConfigMap the local store keeps for a (validated) Secret."""
    name = str((secret.get("metadata") or {}).get("name") or "")
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": carrier_name(name), "namespace": namespace,
            "labels": {CARRIER_LABEL: "true", "app.kubernetes.io/managed-by": "meshserve-local"},
            "annotations": {SECRET_NAME_ANNOTATION: name},
        },
        "data": secret_data(secret),
    }


def carried_secret(obj: Mapping[str, Any]) -> tuple[str, dict[str, str]] | None:
    """(Secret name, base64 data) of a carrier ConfigMap; None for any other object."""
    meta = obj.get("metadata") or {}
    if obj.get("kind") != "ConfigMap" or (meta.get("labels") or {}).get(CARRIER_LABEL) != "true":
        return None
    name = str((meta.get("annotations") or {}).get(SECRET_NAME_ANNOTATION) or "")
    if not name or meta.get("name") != carrier_name(name):
        return None
    return name, {str(k): str(v) for k, v in (obj.get("data") or {}).items()}


class StorageConfigFiles:
    """The storage-config folder of the local runtime pods: one file per Secret key.

    Only the keys this class wrote (listed in `.meshserve-secret-keys.json`) are ever removed;
    every write is a rename of a complete 0600 temporary file in the same folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _managed(self) -> set[str]:
        try:
            names = json.loads((self.directory / MANAGED_KEYS_FILE).read_text())
        except (OSError, ValueError):
            return set()
        return {str(n) for n in names if isinstance(n, str) and valid_key_name(n)} if isinstance(names, list) else set()

    def _write(self, name: str, payload: bytes) -> None:
        tmp = self.directory / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.directory / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def sync(self, data: Mapping[str, str] | None) -> list[str]:
        """Make the folder hold `data` (base64 values; None: the Secret is gone); returns the
        keys written. Unchanged files are not rewritten."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        written: list[str] = []
        wanted: set[str] = set()
        for key, value in sorted((data or {}).items()):
            if not valid_key_name(key):
                log.warning("storage-config key %r is not a valid key name (letters, digits, '-', '_', '.'): skipped", key)
                continue
            try:
                payload = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                log.warning("storage-config key %s is not valid base64: skipped", key)
                continue
            wanted.add(key)
            path = self.directory / key
            try:
                if path.read_bytes() == payload:
                    continue
            except OSError:
                pass
            self._write(key, payload)
            written.append(key)
        for stale in sorted(self._managed() - wanted):
            (self.directory / stale).unlink(missing_ok=True)
        self._write(MANAGED_KEYS_FILE, json.dumps(sorted(wanted)).encode())
        return written


class StorageSecretSync:
    """Keeps `files` equal to the storage-config Secret of `namespace` in the local store (see
    the module docstring): one listing, then long polls; any failure -> back-off and a fresh
    listing, as `LocalInformers`."""

    def __init__(
        self, api: LocalResourceApi, *, files: StorageConfigFiles, namespace: str, config_map_name: str,
        watch_timeout_seconds: int = 30, sleep: Any = asyncio.sleep,
    ) -> None:
        self.api = api
        self.files = files
        self.namespace = namespace
        self.config_map_name = config_map_name
        self.watch_timeout_seconds = watch_timeout_seconds
        self.synced = asyncio.Event()
        """Set once the folder reflects a first listing of the store."""
        self._sleep = sleep
        self._secret_name = "storage-config"
        self._carriers: dict[str, dict[str, str]] = {}
        self._written: dict[str, str] | None = None

    def _see(self, event_type: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if obj.get("kind") != "ConfigMap" or meta.get("namespace") != self.namespace:
            return
        if meta.get("name") == self.config_map_name:
            data = None if event_type == "DELETED" else obj.get("data")
            try:
                config = parse_configmap_data(data if isinstance(data, Mapping) else None).config
            except ConfigError:
                return  # the reconciler reports it; the name in force stays
            self._secret_name = config.storage_secret_name
            return
        carried = carried_secret(obj)
        if carried is not None:
            name, data = carried
            if event_type == "DELETED":
                self._carriers.pop(name, None)
            else:
                self._carriers[name] = data

    def _refresh(self) -> None:
        data = self._carriers.get(self._secret_name)
        if self._written is not None and dict(data or {}) == self._written:
            return
        written = self.files.sync(data)
        self._written = dict(data or {})
        if written or not data:
            log.info("storage-config %s: %d key(s) in %s (%s written)", self._secret_name, len(data or {}),
                     self.files.directory, ", ".join(written) or "none")

    async def relist(self) -> str:
        listed = await self.api.list_all()
        self._carriers.clear()
        for obj in listed.items:
            self._see("ADDED", obj)
        await asyncio.to_thread(self._refresh)
        self.synced.set()
        return listed.resource_version

    async def run(self) -> None:
        """Forever (cancel to stop)."""
        version, attempt = "", 0
        need_list = True
        while True:
            try:
                if need_list:
                    version = await self.relist()
                    need_list = False
                events, version = await self.api.watch_all(
                    resource_version=version, timeout_seconds=self.watch_timeout_seconds
                )
                for event in events:
                    self._see(event.type, event.object)
                if events:
                    await asyncio.to_thread(self._refresh)
                attempt = 0
            except (KubeError, ValueError, OSError) as err:
                delay = backoff_delay(attempt=attempt, rand=random.random())
                attempt += 1
                need_list = True
                log.warning("storage-config sync failed (%s); re-listing in %.2fs", type(err).__name__, delay)
                await self._sleep(delay)
