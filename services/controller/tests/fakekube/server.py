"""A wire-level fake of the Kubernetes API server, run as a real process for component tests.

`python server.py --port N [--state FILE] [--history 1000]` serves on 127.0.0.1:N the JSON the
real API server speaks, for the paths the controller uses:

* core v1 `/api/v1/namespaces/{ns}/{secrets,configmaps,events}`, apps/v1 deployments,
  serving.kserve.io v1alpha1 servingruntimes/predictors (namespaced), clusterservingruntimes
  (cluster-scoped) and v1beta1 inferenceservices; discovery stubs `/api`, `/apis`, `/version`;
* GET list (list `metadata.resourceVersion`), GET one, POST, PUT (409 on a stale
  resourceVersion), PATCH (`application/merge-patch+json`, `application/json-patch+json`,
  `application/strategic-merge-patch+json` treated as merge), DELETE, and the `/status`
  subresource (writes to the main resource keep `.status`; `/status` writes keep everything else);
* finalizers as the real server: DELETE of an object with `metadata.finalizers` only sets
  `deletionTimestamp` (and bumps `generation`; MODIFIED event, 200 with the object), a second
  DELETE changes nothing; the write that removes the last finalizer of such an object deletes it
  (DELETED event); adding a finalizer to an object being deleted is 422 Forbidden, and
  `deletionTimestamp` cannot be set or changed by a write;
* `?watch=true|1&resourceVersion=N`: a chunked stream of `{"type","object"}` lines; events with
  rv > N are replayed from a bounded history, then live ones follow; N older than the history
  floor gets HTTP 200 plus an in-stream `ERROR` whose object is a `Status` with code 410, as the
  real server does; `timeoutSeconds` closes the stream.

One global, monotonically increasing resourceVersion. With `--state`, objects and the counter are
saved after each write and loaded at start, so a killed and restarted server keeps its "etcd"
(history starts empty at the loaded rv, so older resourceVersions get 410 after a restart).

Test-only control endpoints (not Kubernetes): `POST /_control/expire` drops the history, raises
the floor to the current rv and ends every open watch with an ERROR 410 event;
`GET /_control/requests` returns the request log (method, path, query, content type).

Only aiohttp and the standard library: the file runs on its own, outside the package.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

KINDS: dict[str, tuple[str, bool, bool]] = {
    # plural: (kind, namespaced, has a status subresource)
    "secrets": ("Secret", True, False),
    "configmaps": ("ConfigMap", True, False),
    "events": ("Event", True, False),
    "deployments": ("Deployment", True, True),
    "servingruntimes": ("ServingRuntime", True, False),
    "clusterservingruntimes": ("ClusterServingRuntime", False, False),
    "predictors": ("Predictor", True, True),
    "inferenceservices": ("InferenceService", True, True),
}
GROUPS = {"": ("v1",), "apps": ("v1",), "serving.kserve.io": ("v1alpha1", "v1beta1")}


@dataclass(frozen=True)
class Target:
    api_version: str      # "v1", "apps/v1", "serving.kserve.io/v1beta1"
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def kind(self) -> str:
        return KINDS[self.plural][0]


def status_obj(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def fail(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_obj(code, reason, message), status=code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902: add, replace, remove, test (what controllers use)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if op["op"] == "add":
                    parent.insert(idx, op["value"])
                else:
                    parent[idx] = op["value"]
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif op["op"] == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return doc


class FakeApiServer:
    def __init__(self, *, state: Path | None, history: int) -> None:
        self.state = state
        self.rv = 0
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}   # (plural, ns, name)
        self.history: deque[tuple[int, str, str, str, dict[str, Any]]] = deque(maxlen=history)
        self.floor = 0          # oldest rv a watch may resume from
        self.watchers: set[asyncio.Queue[tuple[str, str, str, dict[str, Any]] | None]] = set()
        self.requests: list[dict[str, Any]] = []
        if state is not None and state.exists():
            saved = json.loads(state.read_text())
            self.rv = saved["rv"]
            self.objects = {tuple(k.split("\x00")): v for k, v in saved["objects"].items()}  # type: ignore[misc]
        self.floor = self.rv

    def save(self) -> None:
        if self.state is None:
            return
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rv": self.rv, "objects": {"\x00".join(k): v for k, v in self.objects.items()}}))
        tmp.replace(self.state)

    def emit(self, event_type: str, plural: str, ns: str, obj: dict[str, Any]) -> None:
        self.history.append((self.rv, plural, ns, event_type, copy.deepcopy(obj)))
        if len(self.history) == self.history.maxlen:
            self.floor = max(self.floor, self.history[0][0] - 1)
        for q in self.watchers:
            q.put_nowait((event_type, plural, ns, copy.deepcopy(obj)))
        self.save()

    def bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    # --- routing ---------------------------------------------------------------------------------

    @staticmethod
    def parse(path: str) -> Target | None:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
            api_version, rest = "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis" and parts[1] in GROUPS and parts[2] in GROUPS[parts[1]]:
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in KINDS or len(rest) > 3:
            return None
        namespaced = KINDS[rest[0]][1]
        if namespace is not None and not namespaced:
            return None
        if namespace is None and namespaced and len(rest) > 1:
            return None
        return Target(api_version, rest[0], namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "contentType": request.headers.get("Content-Type", "")})
        target = self.parse(request.path)
        if target is None:
            return fail(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        if target.subresource not in (None, "status") or (target.subresource and not KINDS[target.plural][2]):
            return fail(404, "NotFound", "no such subresource")
        if target.name is None:
            if request.method == "GET":
                if request.query.get("watch") in ("1", "true"):
                    return await self.watch(request, target)
                return self.list(target)
            if request.method == "POST":
                return await self.create(request, target)
            return fail(405, "MethodNotAllowed", "method not allowed on a collection")
        key = (target.plural, target.namespace or "", target.name)
        current = self.objects.get(key)
        if request.method == "GET":
            return web.json_response(current) if current else self.not_found(target)
        if request.method == "DELETE":
            if current is None:
                return self.not_found(target)
            if current["metadata"].get("finalizers"):
                if current["metadata"].get("deletionTimestamp"):
                    return web.json_response(current)      # already being deleted: no change
                marked = copy.deepcopy(current)
                marked["metadata"]["deletionTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                marked["metadata"]["deletionGracePeriodSeconds"] = 0
                marked["metadata"]["generation"] = int(current["metadata"].get("generation") or 1) + 1
                self.objects[key] = marked
                self.bump(marked)
                self.emit("MODIFIED", target.plural, key[1], marked)
                return web.json_response(marked)
            del self.objects[key]
            self.bump(current)
            self.emit("DELETED", target.plural, key[1], current)
            return web.json_response(current)
        if request.method in ("PUT", "PATCH"):
            if current is None:
                return self.not_found(target)
            try:
                body = await request.json()
                if request.method == "PUT":
                    rv = (body.get("metadata") or {}).get("resourceVersion")
                    if rv and rv != current["metadata"]["resourceVersion"]:
                        return fail(409, "Conflict", f'Operation cannot be fulfilled on {target.plural} "{target.name}": '
                                    "the object has been modified; please apply your changes to the latest version and try again")
                    updated = body
                elif request.content_type == "application/json-patch+json":
                    updated = json_patch(current, body)
                elif request.content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    updated = merge_patch(current, body)
                else:
                    return fail(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml ({request.content_type})")
            except (ValueError, KeyError, IndexError, TypeError) as err:
                return fail(422, "Invalid", str(err))
            return self.update(target, current, updated)
        return fail(405, "MethodNotAllowed", "method not allowed")

    def not_found(self, target: Target) -> web.Response:
        group = target.api_version.split("/")[0] if "/" in target.api_version else ""
        res = f"{target.plural}.{group}" if group else target.plural
        return fail(404, "NotFound", f'{res} "{target.name}" not found')

    def update(self, target: Target, current: dict[str, Any], updated: dict[str, Any]) -> web.Response:
        has_status = KINDS[target.plural][2]
        new = copy.deepcopy(current)
        if target.subresource == "status":
            if "status" in updated:
                new["status"] = updated["status"]
            else:
                new.pop("status", None)
        else:
            for field, value in updated.items():
                if field in ("metadata", "status"):
                    continue
                new[field] = value
            for field in [f for f in new if f not in updated and f not in ("metadata", "status", "kind", "apiVersion")]:
                del new[field]
            meta = updated.get("metadata") or {}
            for field in ("labels", "annotations", "finalizers", "ownerReferences"):
                if field in meta:
                    new["metadata"][field] = meta[field]
                else:
                    new["metadata"].pop(field, None)
            if not has_status:
                if "status" in updated:
                    new["status"] = updated["status"]
            if new.get("spec") != current.get("spec"):
                new["metadata"]["generation"] = int(current["metadata"].get("generation") or 1) + 1
        if new == current:
            return web.json_response(current)   # no-op writes do not bump the resourceVersion
        deleting = current["metadata"].get("deletionTimestamp")
        if deleting:
            added = set(new["metadata"].get("finalizers") or []) - set(current["metadata"].get("finalizers") or [])
            if added:
                return fail(422, "Invalid", f'{target.kind} "{target.name}" is invalid: metadata.finalizers: '
                            "Forbidden: no new finalizers can be added if the object is being deleted, "
                            f"found new finalizers {sorted(added)}")
            if not new["metadata"].get("finalizers"):       # the last one removed: deleted now
                del self.objects[(target.plural, target.namespace or "", target.name or "")]
                self.bump(new)
                self.emit("DELETED", target.plural, target.namespace or "", new)
                return web.json_response(new)
        self.objects[(target.plural, target.namespace or "", target.name or "")] = new
        self.bump(new)
        self.emit("MODIFIED", target.plural, target.namespace or "", new)
        return web.json_response(new)

    async def create(self, request: web.Request, target: Target) -> web.Response:
        try:
            body = await request.json()
        except ValueError as err:
            return fail(400, "BadRequest", str(err))
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return fail(422, "Invalid", "metadata.name: Required value")
        ns = target.namespace or ""
        if target.namespace is not None:
            meta["namespace"] = ns
        key = (target.plural, ns, name)
        if key in self.objects:
            return fail(409, "AlreadyExists", f'{target.plural} "{name}" already exists')
        body["kind"], body["apiVersion"] = target.kind, target.api_version
        meta.update({"uid": str(uuid.uuid4()), "generation": 1,
                     "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
        if KINDS[target.plural][2]:
            body.pop("status", None)
        self.objects[key] = body
        self.bump(body)
        self.emit("ADDED", target.plural, ns, body)
        return web.json_response(body, status=201)

    def _selected(self, target: Target, plural: str, ns: str) -> bool:
        return plural == target.plural and (target.namespace is None or ns == target.namespace)

    def list(self, target: Target) -> web.Response:
        items = [copy.deepcopy(o) for (p, ns, _), o in sorted(self.objects.items()) if self._selected(target, p, ns)]
        for item in items:          # as the real server: list items carry no kind/apiVersion
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return web.json_response({"kind": f"{target.kind}List", "apiVersion": target.api_version,
                                  "metadata": {"resourceVersion": str(self.rv)}, "items": items})

    async def watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        raw_rv = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(event_type: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")

        queue: asyncio.Queue[tuple[str, str, str, dict[str, Any]] | None] = asyncio.Queue()
        self.watchers.add(queue)
        try:
            if raw_rv in ("", "0"):
                for (p, ns, _), obj in sorted(self.objects.items()):
                    if self._selected(target, p, ns):
                        await send("ADDED", obj)
            else:
                since = int(raw_rv)
                if since < self.floor:
                    await send("ERROR", status_obj(410, "Expired", f"too old resource version: {since} ({self.floor})"))
                    return response
                for rv, p, ns, etype, obj in list(self.history):
                    if rv > since and self._selected(target, p, ns):
                        await send(etype, obj)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=left)
                except TimeoutError:
                    break
                if item is None:   # forced expiry
                    await send("ERROR", status_obj(410, "Expired", "too old resource version (history expired)"))
                    break
                etype, p, ns, obj = item
                if self._selected(target, p, ns):
                    await send(etype, obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.discard(queue)
        return response

    # --- control and discovery -------------------------------------------------------------------

    async def expire(self, _: web.Request) -> web.Response:
        self.history.clear()
        self.floor = self.rv
        for q in list(self.watchers):
            q.put_nowait(None)
        return web.json_response({"floor": self.floor, "closedWatches": len(self.watchers)})

    async def request_log(self, _: web.Request) -> web.Response:
        return web.json_response(self.requests)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/version", lambda _: web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"}))
        app.router.add_get("/api", lambda _: web.json_response({"kind": "APIVersions", "versions": ["v1"]}))
        app.router.add_get("/apis", lambda _: web.json_response({"kind": "APIGroupList", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs]} for g, vs in GROUPS.items() if g
        ]}))
        app.router.add_post("/_control/expire", self.expire)
        app.router.add_get("/_control/requests", self.request_log)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, default=None)
    parser.add_argument("--history", type=int, default=1000)
    args = parser.parse_args()
    server = FakeApiServer(state=args.state, history=args.history)
    web.run_app(server.app(), host="127.0.0.1", port=args.port, print=None, shutdown_timeout=0.5)


if __name__ == "__main__":
    main()
