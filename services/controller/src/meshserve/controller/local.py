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
import contextlib
import importlib
import json
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from meshserve.common.backoff import backoff_delay
from meshserve.common.labels import LOCAL_SECRET_LABEL
from meshserve.controller.autoscale import (
    Action,
    Decision,
    Policy,
    Sample,
    decide,
    parse_pressure,
    prune,
)
from meshserve.controller.deployments import SPEC_HASH_ANNOTATION
from meshserve.controller.hpa import AutoscalingError, ScaleBounds, scale_bounds
from meshserve.controller.kube import (
    CLUSTER_SERVING_RUNTIME,
    JSON,
    SERVING_RUNTIME,
    KubeError,
    ObjectList,
    ResourceKind,
    WatchEvent,
)
from meshserve.controller.reconcile import ActionKind, DeploymentAction, ObservedDeployment
from meshserve.controller.runtimes import parse_runtime
from meshserve.controller.serving_config import ConfigError, parse_configmap_data
from meshserve.controller.watcher import Informer

log = logging.getLogger(__name__)


async def _request_json(client: httpx.AsyncClient, method: str, path: str, *, what: str, **kwargs: Any) -> JSON:
    """One admin API call: its JSON object, or a KubeError naming `what` (unreachable: 503;
    an error answer: its status and message; not JSON: 502)."""
    try:
        response = await client.request(method, path, **kwargs)
    except httpx.HTTPError as err:
        raise KubeError(503, f"{what} unreachable: {type(err).__name__}: {err}") from None
    if not 200 <= response.status_code <= 299:
        raise KubeError(response.status_code, _message(response))
    try:
        body = response.json()
    except ValueError as err:
        raise KubeError(502, f"{what} answered non-JSON: {err}") from None
    return body if isinstance(body, dict) else {}


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
        return await _request_json(self._client, method, path, what="resource store", **kwargs)

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


# --- autoscaling runtime pods on model pressure (local mode) --------------------------------------

DEFAULT_PROCESS_PROVIDER = "meshserve.cli.runtimes_local:ProcessRuntimes"


@dataclass(frozen=True)
class PressureReading:
    """One answer of the scheduler's `GET /v1/runtimes/{name}/pressure`."""

    window_seconds: float
    evicted_bytes_per_minute: float
    lru_copy_age_seconds: float | None
    serving_pods: tuple[str, ...]
    """Pods of the runtime the scheduler knows and that are not draining."""
    all_pods: tuple[str, ...]
    """Every pod of the runtime the scheduler knows, draining ones included."""
    pod_capacity_bytes: int
    """The largest model memory of one of them (0: none yet)."""


class AdminApi:
    """The two scheduler admin calls the autoscaler makes: read a runtime's pressure, drain a
    pod. Failures raise `KubeError` (503 when the scheduler cannot be reached)."""

    def __init__(self, base_url: str, *, token: str | None = None, drain_timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=30.0)
        self._drain_timeout = drain_timeout

    async def close(self) -> None:
        await self._client.aclose()

    async def _json(self, method: str, path: str, **kwargs: Any) -> JSON:
        return await _request_json(self._client, method, path, what="scheduler admin API", **kwargs)

    async def pressure(self, runtime: str, *, window_seconds: float) -> PressureReading:
        body = await self._json("GET", f"/v1/runtimes/{quote(runtime, safe='')}/pressure",
                                params={"windowSeconds": str(window_seconds)})
        read = parse_pressure(body, window_seconds=window_seconds)
        return PressureReading(
            window_seconds=read.window_seconds,
            evicted_bytes_per_minute=read.evicted_bytes_per_minute,
            lru_copy_age_seconds=read.lru_copy_age_seconds,
            serving_pods=tuple(sorted(p.pod_id for p in read.pods if not p.draining)),
            all_pods=tuple(sorted(p.pod_id for p in read.pods)),
            pod_capacity_bytes=read.pod_capacity_bytes,
        )

    async def drain(self, pod_id: str) -> JSON:
        return await self._json("POST", f"/v1/pods/{quote(pod_id, safe='')}:drain", timeout=self._drain_timeout)


@dataclass
class _Scaled:
    """What the autoscaler keeps per runtime Deployment."""

    runtime: str
    planned: int
    """What the reconciler's plan asked (0: scaled to zero; the autoscaler then does nothing)."""
    current: int
    """What the inner backend runs."""
    samples: list[Sample] = field(default_factory=list)
    last_change: float | None = None
    problem: str = ""
    draining: str = ""
    """A pod whose drain this autoscaler started and has not yet stopped (retried until it is)."""


def _pod_seq(pod_id: str, deployment: str) -> int | None:
    tail = pod_id.removeprefix(f"{deployment}-")
    return int(tail) if tail != pod_id and tail.isdigit() else None


class AutoscaledRuntimes:
    """RuntimeBackend that wraps another (the local process pods) and scales each runtime's
    pods on model pressure, between the bounds of its annotations (`hpa.scale_bounds`).

    * `apply`: the reconciler's action goes to the inner backend with `replicas` replaced by
      the autoscaled count (the planned replicas clamped to the bounds for a new Deployment;
      0 and DELETE pass unchanged); `observed` reports the *planned* replicas back, so the
      plan does not fight the autoscaler.
    * `run` (started on the first `apply`, on the controller's loop, like the storage-config
      sync): every `interval` seconds, per Deployment with planned replicas > 0, read the
      runtime's bounds from the resource store and its pressure from the scheduler, keep the
      readings, and follow `autoscale.decide`: UP starts a pod; DOWN first drains the pod the
      process supervisor stops next (the newest: `<deployment>-<highest sequence>`), so its
      copies are re-placed before it goes, then stops it; a drain that failed is retried on
      the same pod at the next tick, before anything else. A reading where the scheduler knows
      fewer serving pods than run (one starting or leaving) is not kept and nothing is decided
      on it (the missing reading also breaks the windows' coverage).
    * A failure (scheduler or store unreachable, a bad annotation) is logged and retried next
      tick; it never stops the controller.
    """

    def __init__(
        self, inner: Any, *, resources: LocalResourceApi, admin: AdminApi, namespace: str, settings: Any,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.resources = resources
        self.admin = admin
        self.namespace = namespace
        self.settings = settings
        self.clock = clock
        self._sleep = sleep
        self.scaled: dict[str, _Scaled] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- RuntimeBackend -------------------------------------------------------------------------
    def observed(self) -> dict[str, ObservedDeployment]:
        seen = self.inner.observed()
        for name, state in self.scaled.items():
            if name in seen:
                seen[name] = replace(seen[name], replicas=state.planned)
        return dict(seen)

    async def apply(self, action: DeploymentAction, *, namespace: str) -> None:
        self.start()
        async with self._lock:
            if action.kind is ActionKind.DELETE or action.replicas == 0:
                self.scaled.pop(action.name, None)
                await self.inner.apply(action, namespace=namespace)
                return
            state = self.scaled.get(action.name)
            bounds, problem = await self._bounds(action.runtime, planned=action.replicas)
            current = state.current if state is not None and state.current > 0 else bounds.min_replicas
            replicas = bounds.clamp(current)
            await self.inner.apply(replace(action, replicas=replicas), namespace=namespace)
            if state is None:
                state = self.scaled[action.name] = _Scaled(runtime=action.runtime, planned=action.replicas, current=replicas)
            state.runtime, state.planned, state.current = action.runtime, action.replicas, replicas
            self._note_problem(action.name, state, problem)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.admin.close()
        await self.resources.close()
        await self.inner.close()

    # -- the loop -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start `run` on the running loop once (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="runtime-autoscaler")

    async def run(self) -> None:
        """Forever (cancel to stop)."""
        while True:
            for name in list(self.scaled):
                try:
                    await self.tick(name)
                except (KubeError, ValueError, RuntimeError) as err:
                    log.warning("autoscaler: %s: %s", name, err)
            await self._sleep(float(self.settings.autoscale_interval_seconds))

    async def _bounds(self, runtime_name: str, *, planned: int) -> tuple[ScaleBounds, str]:
        """The runtime's bounds (a namespaced ServingRuntime wins over a cluster one); on a bad
        annotation, the planned replicas as both bounds and the problem."""
        obj = await self.resources.get(SERVING_RUNTIME, namespace=self.namespace, name=runtime_name)
        cluster = obj is None
        if cluster:
            obj = await self.resources.get(CLUSTER_SERVING_RUNTIME, name=runtime_name)
        fixed = ScaleBounds(max(1, planned), max(1, planned))
        if obj is None:
            return fixed, ""
        try:
            return scale_bounds(parse_runtime(obj, cluster_scoped=cluster), default_replicas=planned), ""
        except AutoscalingError as err:
            return fixed, str(err)

    def _note_problem(self, name: str, state: _Scaled, problem: str) -> None:
        if problem != state.problem and problem:
            log.warning("autoscaler: runtime %s is not autoscaled: %s", state.runtime, problem)
        state.problem = problem

    def policy(self, bounds: ScaleBounds, *, pod_capacity: int) -> Policy:
        s = self.settings
        return Policy(
            min_pods=bounds.min_replicas, max_pods=bounds.max_replicas,
            up_evicted_bytes_per_minute=max(1.0, float(s.autoscale_up_evicted_fraction) * pod_capacity),
            up_window_seconds=float(s.autoscale_up_window_seconds),
            down_idle_seconds=float(s.autoscale_down_idle_seconds),
            down_window_seconds=float(s.autoscale_down_window_seconds),
            cooldown_seconds=float(s.autoscale_cooldown_seconds),
        )

    async def tick(self, name: str) -> Decision | None:
        """One look at one Deployment: read, decide, act. Returns the decision (None: skipped)."""
        state = self.scaled.get(name)
        if state is None or state.planned == 0:
            return None
        bounds, problem = await self._bounds(state.runtime, planned=state.planned)
        self._note_problem(name, state, problem)
        reading = await self.admin.pressure(state.runtime, window_seconds=float(self.settings.autoscale_pressure_window_seconds))
        now = self.clock()
        policy = self.policy(bounds, pod_capacity=reading.pod_capacity_bytes)
        state.samples = prune(state.samples, now=now, policy=policy)
        if state.draining:
            decision = Decision(Action.DOWN, state.current - 1, f"retrying the drain of {state.draining}")
        elif len(reading.serving_pods) < min(state.current, bounds.max_replicas):
            # a pod starting or leaving (or drained by hand): no reading, no decision
            return Decision(Action.HOLD, state.current, f"{len(reading.serving_pods)} of {state.current} pod(s) serving")
        else:
            state.samples.append(Sample(
                at=now, window_seconds=reading.window_seconds,
                evicted_bytes_per_minute=reading.evicted_bytes_per_minute,
                lru_copy_age_seconds=reading.lru_copy_age_seconds,
            ))
            decision = decide(state.samples, current=state.current, policy=policy, now=now, last_change=state.last_change)
        if decision.action is Action.HOLD:
            return decision
        if decision.action is Action.DOWN:
            # the pod the supervisor stops next: the newest (a failed drain is retried on the same pod)
            victim = state.draining or max(
                (p for p in reading.all_pods if _pod_seq(p, name) is not None),
                key=lambda p: _pod_seq(p, name) or 0, default="",
            )
            if victim:
                state.draining = victim
                log.info("autoscaler: runtime %s: draining pod %s before removing it (%s)", state.runtime, victim, decision.reason)
                try:
                    result = await self.admin.drain(victim)
                except KubeError as err:
                    if err.status != 404:   # gone already: nothing to move
                        raise
                else:
                    log.info("autoscaler: pod %s drained: moved %s, unloaded %s",
                             victim, result.get("moved") or [], result.get("unloaded") or [])
        async with self._lock:
            state = self.scaled.get(name)
            if state is None or state.planned == 0:
                return None   # deleted or scaled to zero meanwhile
            action = DeploymentAction(ActionKind.SCALE, name, state.runtime, decision.target, None, decision.reason)
            await self.inner.apply(action, namespace=self.namespace)
            state.current, state.last_change, state.draining = decision.target, self.clock(), ""
        log.info("autoscaler: runtime %s scaled %s to %d pod(s): %s", state.runtime, decision.action.value,
                 decision.target, decision.reason)
        return decision


def autoscaled(inner: Any, *, settings: Any) -> Any:
    """`inner` wrapped in an `AutoscaledRuntimes` when `settings.autoscale` is on (idempotent:
    an already wrapped backend is returned as it is)."""
    if isinstance(inner, AutoscaledRuntimes) or not getattr(settings, "autoscale", False):
        return inner
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return AutoscaledRuntimes(
        inner, resources=LocalResourceApi(settings.admin_url, token=token),
        admin=AdminApi(settings.admin_url, token=token), namespace=settings.namespace, settings=settings,
    )


def autoscaled_process_runtimes(settings: Any) -> Any:
    """A `local_provider` factory: the process runtimes (`DEFAULT_PROCESS_PROVIDER`), autoscaled."""
    module_name, _, attr = DEFAULT_PROCESS_PROVIDER.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return autoscaled(factory(settings), settings=settings)
