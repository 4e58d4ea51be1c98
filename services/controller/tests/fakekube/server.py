"""A wire-level fake of the Kubernetes API server, run as a real process for component tests.

`python server.py --port N [--state FILE] [--history 1000] [--kustomization DIR]
[--token TOKEN=USER ...] [--bookmark-interval S]` serves on 127.0.0.1:N the JSON the real API
server speaks, for the paths the controller uses:

* core v1 secrets, configmaps, events, services, pods (namespaced) and namespaces; apps/v1
  deployments; autoscaling/v2 horizontalpodautoscalers and policy/v1 poddisruptionbudgets
  (namespaced; no controller behind them: a Deployment's replicas make no Pods, a test
  creates the Pods it needs); every
  kind a CRD of `--kustomization` serves (serving.kserve.io: servingruntimes, predictors,
  inferenceservices, clusterservingruntimes), with the CRD's scope, versions and subresources;
  discovery stubs `/api`, `/apis`, `/version`;
* GET list (list `metadata.resourceVersion`), GET one, POST, PUT, PATCH
  (`application/merge-patch+json`, `application/json-patch+json`,
  `application/strategic-merge-patch+json` treated as merge), DELETE.

What it enforces, as the real server does:

* **Structural CRDs**: a CRD whose schema is not structural (a node without a type, ...) stops
  the server at start, as the real one would refuse to create it.
* **Schemas** (`fake_builtin`): every write of a built-in kind is validated against the
  Kubernetes 1.32 OpenAPI schema of its kind (from `kubernetes-validate`; unknown fields are
  refused, which is stricter than the real server's pruning). (`fake_schema`): every write of
  a custom resource is pruned, defaulted and
  validated against its CRD version's structural `openAPIV3Schema`
  (`x-kubernetes-preserve-unknown-fields`, `default`, `required`, `enum`, types, formats); a bad
  object answers 422 `Invalid` with a Status naming each field in `details.causes`. Pruned
  fields are dropped and reported in a `Warning: 299 - "unknown field \\"spec.x\\""` header
  (`?fieldValidation=Strict` answers 400 instead, `Ignore` drops them silently); object names
  must be RFC 1123 subdomains.
* **resourceVersion**: a PUT, or a PATCH whose result carries a `metadata.resourceVersion`,
  other than the stored one answers 409 `Conflict`; a PUT of a custom resource without one is
  422 (CRDs allow no unconditional update); a POST carrying one is 400.
* **Status subresource** (Deployments, and CRDs with `subresources.status`): a create drops
  `.status`; a write to the main resource keeps the stored `.status`; a write to `/status`
  changes only `.status`. `generation` grows when anything but metadata and status changes.
* **Services**: a create without `spec.clusterIP` is given one; an update that leaves it out
  keeps it, one that changes it is 422 (the field is immutable).
* **Finalizers**: DELETE of an object with `metadata.finalizers` only sets `deletionTimestamp`
  (MODIFIED event, 200 with the object), a second DELETE changes nothing; the write that removes
  the last finalizer of such an object deletes it (DELETED event); adding a finalizer to an object
  being deleted is 422.
* **Field selectors** on list and watch: `fieldSelector=metadata.name=x[,metadata.namespace=y]`
  (the fields every kind supports); any other field is 400.
* **Watches** (`?watch=true|1&resourceVersion=N`): a chunked stream of `{"type","object"}`
  lines; events with rv > N are replayed from a bounded history, then live ones follow;
  N older than the history floor gets HTTP 200 plus an in-stream `ERROR` whose object is a
  Status with code 410 ("too old resource version"); `allowWatchBookmarks=true` adds a BOOKMARK
  (the current resourceVersion) every `--bookmark-interval` seconds while the stream is idle and
  one before `timeoutSeconds` closes it.
* **Authentication and RBAC** (`fake_rbac`): a bearer token maps to a user (`--token`); no
  token is the test harness, a cluster admin; an unknown token is 401. Every request of a user is
  authorized against the (Cluster)Roles that the (Cluster)RoleBindings of `--kustomization` bind to
  it; a verb, resource or subresource they do not grant answers 403 `Forbidden` and is recorded.

One global, monotonically increasing resourceVersion. With `--state`, objects and the counter are
saved after each write and loaded at start, so a killed and restarted server keeps its "etcd"
(history starts empty at the loaded rv, so older resourceVersions get 410 after a restart).

Test-only control endpoints (not Kubernetes, no authentication):
`POST /_control/expire` drops the history, raises the floor to the current rv and ends every
open watch with an ERROR 410 event; `POST /_control/compact` drops the history and raises the
floor but leaves open watches running (etcd compaction); `POST /_control/stall` stops delivering
events (and bookmarks) to the watches open now, as a stream broken without the client noticing,
until they end; `POST /_control/conflict` with `{"method", "path", "times", "patch"}` makes the next
`times` such requests meet a concurrent writer: just before each is applied, the server applies
`patch` (a merge patch; default: an annotation `fakekube/concurrent-write`) to the same path
itself, so the object has a new resourceVersion;
`GET /_control/requests` returns the request log (method, path, query, content type, user,
answer code); `GET /_control/denied` the requests RBAC refused; `GET /_control/pruned` the
fields pruned from authenticated users' writes.

aiohttp, PyYAML and the standard library only: the file runs on its own, outside the package.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import re
import sys
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the fake's own modules, beside this file
from fake_builtin import BuiltinSchemas
from fake_rbac import Attributes, Authorizer, load_kustomization
from fake_schema import FieldError, StructuralSchema, served_kind, structural_problems

ADMIN = "system:admin"
"""The user of requests without a token (the test harness): allowed everything."""


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str
    versions: tuple[str, ...]
    namespaced: bool
    status_subresource: bool
    unconditional_update: bool = True          # built-in kinds; CRDs require a resourceVersion
    schemas: dict[str, StructuralSchema] = field(default_factory=dict)


BUILTIN: dict[tuple[str, str], Resource] = {
    ("", "secrets"): Resource("Secret", "", ("v1",), True, False),
    ("", "configmaps"): Resource("ConfigMap", "", ("v1",), True, False),
    ("", "events"): Resource("Event", "", ("v1",), True, False),
    ("", "namespaces"): Resource("Namespace", "", ("v1",), False, True),
    ("", "services"): Resource("Service", "", ("v1",), True, True),
    ("", "pods"): Resource("Pod", "", ("v1",), True, True),
    ("policy", "poddisruptionbudgets"): Resource("PodDisruptionBudget", "policy", ("v1",), True, True),
    ("apps", "deployments"): Resource("Deployment", "apps", ("v1",), True, True),
    ("autoscaling", "horizontalpodautoscalers"): Resource("HorizontalPodAutoscaler", "autoscaling", ("v2",), True, True),
}
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class Target:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def status_obj(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": message, "reason": reason, "code": code}
    if details:
        out["details"] = details
    return out


def fail(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> web.Response:
    return web.json_response(status_obj(code, reason, message, details), status=code)


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
                raise ValueError(f"testing value {op['path']} failed")
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return doc


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Rejected(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


class FakeApiServer:
    def __init__(
        self, *, state: Path | None, history: int, manifests: list[dict[str, Any]] | None = None,
        tokens: dict[str, str] | None = None, bookmark_interval: float = 60.0,
    ) -> None:
        self.state = state
        self.rv = 0
        self.resources = dict(BUILTIN)
        docs = manifests or []
        for crd in (d for d in docs if d.get("kind") == "CustomResourceDefinition"):
            for version in crd["spec"]["versions"]:
                problems = structural_problems((version.get("schema") or {}).get("openAPIV3Schema") or {})
                if problems:   # the API server refuses such a CRD
                    raise ValueError(f"CustomResourceDefinition {crd['metadata']['name']} is invalid: "
                                     f"spec.versions[{version['name']}].schema.openAPIV3Schema: {'; '.join(problems)}")
            served = served_kind(crd)
            self.resources[(served.group, served.plural)] = Resource(
                served.kind, served.group, tuple(served.schemas), served.namespaced, served.status_subresource,
                unconditional_update=False, schemas=served.schemas,
            )
        self.authorizer = Authorizer(docs) if manifests is not None else None
        self.builtin = BuiltinSchemas()
        self.tokens = tokens or {}
        self.bookmark_interval = bookmark_interval
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}   # (group/plural, ns, name)
        self.history: deque[tuple[int, str, str, str, dict[str, Any]]] = deque(maxlen=history)
        self.floor = 0          # oldest rv a watch may resume from
        self.watchers: dict[asyncio.Queue[tuple[str, str, str, dict[str, Any]] | None], Target] = {}
        self.stalled: set[asyncio.Queue[tuple[str, str, str, dict[str, Any]] | None]] = set()
        self.requests: list[dict[str, Any]] = []
        self.denied: list[dict[str, Any]] = []
        self.pruned: list[dict[str, Any]] = []
        self.conflicts: list[dict[str, Any]] = []
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

    @staticmethod
    def rkey(target: Target) -> str:
        return f"{target.group}/{target.plural}"

    def emit(self, event_type: str, target: Target, ns: str, obj: dict[str, Any]) -> None:
        rkey = self.rkey(target)
        self.history.append((self.rv, rkey, ns, event_type, copy.deepcopy(obj)))
        if len(self.history) == self.history.maxlen:
            self.floor = max(self.floor, self.history[0][0] - 1)
        for q in self.watchers:
            q.put_nowait((event_type, rkey, ns, copy.deepcopy(obj)))
        self.save()

    def bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    # --- routing ---------------------------------------------------------------------------------

    @staticmethod
    def request_info(path: str) -> Target | None:
        """The request's group, version, namespace, resource, name, subresource (as the API
        server's RequestInfoFactory parses them, before knowing whether the resource exists)."""
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None
        return Target(group, version, rest[0], namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None)

    def served(self, target: Target) -> bool:
        resource = self.resources.get((target.group, target.plural))
        if resource is None or target.version not in resource.versions:
            return False
        if target.namespace is not None and not resource.namespaced:
            return False
        return not (target.namespace is None and resource.namespaced and target.name is not None)

    def resource(self, target: Target) -> Resource:
        return self.resources[(target.group, target.plural)]

    def user_of(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if not auth:
            return ADMIN
        scheme, _, token = auth.partition(" ")
        return self.tokens.get(token) if scheme.lower() == "bearer" else None

    @staticmethod
    def verb(request: web.Request, target: Target) -> str:
        if request.method == "GET":
            if request.query.get("watch") in ("1", "true"):
                return "watch"
            return "get" if target.name else "list"
        if request.method == "DELETE":
            return "delete" if target.name else "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(request.method, request.method.lower())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        entry = {"method": request.method, "path": request.path, "query": dict(request.query),
                 "contentType": request.headers.get("Content-Type", "")}
        self.requests.append(entry)
        user = self.user_of(request)
        entry["user"] = user
        if user is None:
            entry["code"] = 401
            return fail(401, "Unauthorized", "Unauthorized")
        target = self.request_info(request.path)
        if target is None:
            entry["code"] = 404
            return fail(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        if user != ADMIN and self.authorizer is not None:   # authorization first, as the real filter chain

            attrs = Attributes(verb=self.verb(request, target), group=target.group, resource=target.plural,
                               subresource=target.subresource or "", namespace=target.namespace or "", name=target.name or "")
            if not self.authorizer.allowed(user, attrs):
                message = self.authorizer.forbidden_message(user, attrs)
                self.denied.append({**entry, "message": message})
                entry["code"] = 403
                return fail(403, "Forbidden", message, {"name": target.name, "group": target.group, "kind": target.plural}
                            if target.name else {"group": target.group, "kind": target.plural})
        if not self.served(target):
            entry["code"] = 404
            return fail(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        response = await self.dispatch(request, target, user)
        entry["code"] = response.status
        return response

    async def dispatch(self, request: web.Request, target: Target, user: str) -> web.StreamResponse:
        resource = self.resource(target)
        if target.subresource not in (None, "status") or (target.subresource and not resource.status_subresource):
            return fail(404, "NotFound", "the server could not find the requested resource")
        if target.name is None:
            if request.method == "GET":
                fields = self.field_selector(request)
                if isinstance(fields, web.Response):
                    return fields
                if request.query.get("watch") in ("1", "true"):
                    return await self.watch(request, target, fields)
                return self.list(target, fields)
            if request.method == "POST":
                return await self.create(request, target, user)
            return fail(405, "MethodNotAllowed", "method not allowed on a collection")
        key = (self.rkey(target), target.namespace or "", target.name)
        current = self.objects.get(key)
        if request.method == "GET":
            return web.json_response(current) if current else self.not_found(target)
        if request.method == "DELETE":
            return self.delete(target, key, current)
        if request.method in ("PUT", "PATCH"):
            if current is None:
                return self.not_found(target)
            self.concurrent_writer(request, target, key)
            current = self.objects[key]
            try:
                body = await request.json()
            except ValueError as err:
                return fail(400, "BadRequest", str(err))
            try:
                if request.method == "PUT":
                    updated = body
                    if not isinstance(updated, dict):
                        return fail(400, "BadRequest", "the body is not an object")
                    rv = (updated.get("metadata") or {}).get("resourceVersion")
                    if not rv and not resource.unconditional_update:
                        return self.invalid(target, [FieldError("metadata.resourceVersion", "FieldValueInvalid",
                                                                "Invalid value: 0x0: must be specified for an update")])
                elif request.content_type == "application/json-patch+json":
                    updated = json_patch(current, body)
                elif request.content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    updated = merge_patch(current, body)
                else:
                    return fail(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media "
                                f"types include: application/json-patch+json, application/merge-patch+json ({request.content_type})")
            except (ValueError, KeyError, IndexError, TypeError) as err:
                return fail(422, "Invalid", f"the server rejected our request due to an error in our request: {err}")
            rv = (updated.get("metadata") or {}).get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                return self.conflict(target)
            if (updated.get("metadata") or {}).get("name", target.name) != target.name:
                return fail(400, "BadRequest", f"the name of the object ({updated['metadata']['name']}) does not match "
                            f"the name on the URL ({target.name})")
            try:
                return self.update(request, target, user, current, updated)
            except Rejected as rejected:
                return rejected.response
        return fail(405, "MethodNotAllowed", "method not allowed")

    def concurrent_writer(self, request: web.Request, target: Target, key: tuple[str, str, str]) -> None:
        """Another client writes the object first (`/_control/conflict`): its merge patch, to the
        same path (so to `.status` alone for a `/status` request), as the admin."""
        for planned in self.conflicts:
            if planned["method"] == request.method and planned["path"] == request.path and planned["times"] > 0:
                planned["times"] -= 1
                current = self.objects[key]
                patch = planned["patch"] or {"metadata": {"annotations": {"fakekube/concurrent-write": str(self.rv + 1)}}}
                self.update(request, target, ADMIN, current, merge_patch(current, patch))
                return

    def conflict(self, target: Target) -> web.Response:
        return fail(409, "Conflict", f'Operation cannot be fulfilled on {target.resource} "{target.name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    {"name": target.name, "group": target.group, "kind": target.plural})

    def not_found(self, target: Target) -> web.Response:
        return fail(404, "NotFound", f'{target.resource} "{target.name}" not found',
                    {"name": target.name, "group": target.group, "kind": target.plural})

    def invalid(self, target: Target, errors: list[FieldError], name: str | None = None) -> web.Response:
        resource = self.resource(target)
        qualified = f"{resource.kind}.{target.group}" if target.group else resource.kind
        shown = errors[0].message if len(errors) == 1 else "[" + ", ".join(e.message for e in errors) + "]"
        name = name if name is not None else target.name
        return fail(422, "Invalid", f'{qualified} "{name}" is invalid: {shown}', {
            "name": name, "group": target.group, "kind": resource.kind,
            "causes": [{"reason": e.reason, "message": e.detail, "field": e.field} for e in errors],
        })

    def admit(self, request: web.Request, target: Target, user: str, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Prune, default and validate `obj` (as it would be stored); raises Rejected."""
        resource = self.resource(target)
        name = str((obj.get("metadata") or {}).get("name") or "")
        errors: list[FieldError] = []
        if len(name) > 253 or not NAME_RE.match(name):
            errors.append(FieldError("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": a lowercase RFC 1123 '
                          "subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end "
                          "with an alphanumeric character"))
        schema = resource.schemas.get(target.version)
        pruned: list[str] = []
        if schema is not None:
            obj, schema_errors, pruned = schema.admit(obj)
            errors += schema_errors
        elif not errors:
            errors += self.builtin.errors(obj)
        if errors:
            raise Rejected(self.invalid(target, errors, name=name))
        mode = request.query.get("fieldValidation", "Warn")
        if pruned and mode == "Strict":
            unknown = ", ".join(f'unknown field "{p}"' for p in pruned)
            raise Rejected(fail(400, "BadRequest", f"{resource.kind} in version \"{target.version}\" cannot be handled as a "
                                f"{resource.kind}: strict decoding error: {unknown}"))
        if pruned and user != ADMIN:
            self.pruned.append({"user": user, "method": request.method, "path": request.path, "fields": pruned})
        return obj, (pruned if mode != "Ignore" else [])

    @staticmethod
    def answer(obj: dict[str, Any], pruned: list[str], status: int = 200) -> web.Response:
        headers = {"Warning": ", ".join(f'299 - "unknown field \\"{p}\\""' for p in pruned)} if pruned else None
        return web.json_response(obj, status=status, headers=headers)

    def delete(self, target: Target, key: tuple[str, str, str], current: dict[str, Any] | None) -> web.Response:
        if current is None:
            return self.not_found(target)
        if current["metadata"].get("finalizers"):
            if current["metadata"].get("deletionTimestamp"):
                return web.json_response(current)      # already being deleted: no change
            marked = copy.deepcopy(current)
            marked["metadata"]["deletionTimestamp"] = _now()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            marked["metadata"]["generation"] = int(current["metadata"].get("generation") or 1) + 1
            self.objects[key] = marked
            self.bump(marked)
            self.emit("MODIFIED", target, key[1], marked)
            return web.json_response(marked)
        del self.objects[key]
        self.bump(current)
        self.emit("DELETED", target, key[1], current)
        return web.json_response(current)

    def update(self, request: web.Request, target: Target, user: str, current: dict[str, Any], updated: dict[str, Any]) -> web.Response:
        has_status = self.resource(target).status_subresource
        new = copy.deepcopy(current)
        if target.subresource == "status":
            if "status" in updated:
                new["status"] = updated["status"]
            else:
                new.pop("status", None)
        else:
            for name, value in updated.items():
                if name in ("metadata", "status", "kind", "apiVersion"):
                    continue
                new[name] = value
            for name in [f for f in new if f not in updated and f not in ("metadata", "status", "kind", "apiVersion")]:
                del new[name]
            meta = updated.get("metadata") or {}
            for name in ("labels", "annotations", "finalizers", "ownerReferences"):
                if name in meta:
                    new["metadata"][name] = meta[name]
                else:
                    new["metadata"].pop(name, None)
            if not has_status:
                if "status" in updated:
                    new["status"] = updated["status"]
                else:
                    new.pop("status", None)
        if target.plural == "services" and not target.group and target.subresource is None:
            before, after = (current.get("spec") or {}).get("clusterIP"), (new.get("spec") or {}).get("clusterIP")
            if after in (None, "") and before not in (None, ""):
                new.setdefault("spec", {})["clusterIP"] = before      # as the real server: kept when left out
            elif after != before:
                return self.invalid(target, [FieldError("spec.clusterIP", "FieldValueInvalid",
                                                        f'Invalid value: "{after}": field is immutable')])
        new, pruned = self.admit(request, target, user, new)

        def body(obj: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in obj.items() if k not in ("metadata", "status")}
        if body(new) != body(current):
            new["metadata"]["generation"] = int(current["metadata"].get("generation") or 1) + 1
        if new == current:
            return self.answer(current, pruned)   # no-op writes do not bump the resourceVersion
        key = (self.rkey(target), target.namespace or "", target.name or "")
        if current["metadata"].get("deletionTimestamp"):
            added = set(new["metadata"].get("finalizers") or []) - set(current["metadata"].get("finalizers") or [])
            if added:
                return self.invalid(target, [FieldError("metadata.finalizers", "FieldValueForbidden",
                                    "Forbidden: no new finalizers can be added if the object is being deleted, "
                                    f"found new finalizers {sorted(added)}")])
            if not new["metadata"].get("finalizers"):       # the last one removed: deleted now
                del self.objects[key]
                self.bump(new)
                self.emit("DELETED", target, key[1], new)
                return self.answer(new, pruned)
        self.objects[key] = new
        self.bump(new)
        self.emit("MODIFIED", target, key[1], new)
        return self.answer(new, pruned)

    async def create(self, request: web.Request, target: Target, user: str) -> web.Response:
        resource = self.resource(target)
        try:
            body = await request.json()
        except ValueError as err:
            return fail(400, "BadRequest", str(err))
        if not isinstance(body, dict):
            return fail(400, "BadRequest", "the body is not an object")
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return self.invalid(target, [FieldError("metadata.name", "FieldValueRequired", "Required value: name or "
                                                    "generateName is required")], name="")
        if meta.get("resourceVersion"):
            return fail(400, "BadRequest", "resourceVersion should not be set on objects to be created")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if (kind and kind != resource.kind) or (api_version and api_version != target.api_version):
            return fail(400, "BadRequest", f"the API version in the data ({api_version}) does not match the expected API "
                        f"version ({target.api_version})" if api_version != target.api_version else
                        f"{kind} in version \"{target.version}\" cannot be handled as a {resource.kind}")
        ns = target.namespace or ""
        if target.namespace is not None:
            if meta.get("namespace") and meta["namespace"] != ns:
                return fail(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on "
                            "the request")
            meta["namespace"] = ns
        key = (self.rkey(target), ns, name)
        body["kind"], body["apiVersion"] = resource.kind, target.api_version
        if resource.status_subresource:
            body.pop("status", None)
        meta.pop("deletionTimestamp", None)
        try:
            body, pruned = self.admit(request, target, user, body)
        except Rejected as rejected:
            return rejected.response
        if key in self.objects:
            return fail(409, "AlreadyExists", f'{target.resource} "{name}" already exists',
                        {"name": name, "group": target.group, "kind": target.plural})
        body["metadata"].update({"uid": str(uuid.uuid4()), "generation": 1, "creationTimestamp": _now()})
        if target.plural == "services" and not target.group and not (body.get("spec") or {}).get("clusterIP"):
            body.setdefault("spec", {})["clusterIP"] = f"10.96.{(self.rv // 250) % 250}.{self.rv % 250 + 1}"
        self.objects[key] = body
        self.bump(body)
        self.emit("ADDED", target, ns, body)
        return self.answer(body, pruned, status=201)

    def _selected(self, target: Target, rkey: str, ns: str, obj: dict[str, Any] | None = None,
                  fields: dict[str, str] | None = None) -> bool:
        if rkey != self.rkey(target) or (target.namespace is not None and ns != target.namespace):
            return False
        meta = (obj or {}).get("metadata") or {}
        return all(str(meta.get(f.removeprefix("metadata."), "")) == v for f, v in (fields or {}).items())

    @staticmethod
    def field_selector(request: web.Request) -> dict[str, str] | web.Response:
        """`metadata.name=x,metadata.namespace=y` (the fields every kind supports; `==` too)."""
        found: dict[str, str] = {}
        for term in filter(None, request.query.get("fieldSelector", "").split(",")):
            name, sep, value = term.replace("==", "=").partition("=")
            if not sep or name not in ("metadata.name", "metadata.namespace") or "!" in name:
                return fail(400, "BadRequest", f'"{term}" is not a known field selector: only "metadata.name", '
                            '"metadata.namespace"')
            found[name] = value
        return found

    def list(self, target: Target, fields: dict[str, str] | None = None) -> web.Response:
        items = [copy.deepcopy(o) for (p, ns, _), o in sorted(self.objects.items())
                 if self._selected(target, p, ns, o, fields)]
        for item in items:          # as the real server: list items carry no kind/apiVersion
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return web.json_response({"kind": f"{self.resource(target).kind}List", "apiVersion": target.api_version,
                                  "metadata": {"resourceVersion": str(self.rv)}, "items": items})

    async def watch(self, request: web.Request, target: Target, fields: dict[str, str] | None = None) -> web.StreamResponse:
        raw_rv = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true")
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(event_type: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")

        async def bookmark() -> None:
            # every event up to self.rv is already in `queue` (emit is synchronous): only an empty
            # queue lets us promise the client it has seen everything up to this resourceVersion
            if queue.empty() and queue not in self.stalled:
                await send("BOOKMARK", {"kind": self.resource(target).kind, "apiVersion": target.api_version,
                                        "metadata": {"resourceVersion": str(self.rv)}})

        queue: asyncio.Queue[tuple[str, str, str, dict[str, Any]] | None] = asyncio.Queue()
        self.watchers[queue] = target
        try:
            if raw_rv in ("", "0"):
                for (p, ns, _), obj in sorted(self.objects.items()):
                    if self._selected(target, p, ns, obj, fields):
                        await send("ADDED", obj)
            else:
                since = int(raw_rv)
                if since < self.floor:
                    await send("ERROR", status_obj(410, "Expired", f"too old resource version: {since} ({self.floor})"))
                    return response
                for rv, p, ns, etype, obj in list(self.history):
                    if rv > since and self._selected(target, p, ns, obj, fields):
                        await send(etype, obj)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    if bookmarks:
                        await bookmark()
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=min(left, self.bookmark_interval) if bookmarks else left)
                except TimeoutError:
                    if bookmarks and deadline - loop.time() > 0:
                        await bookmark()
                    continue
                if item is None:   # forced expiry
                    await send("ERROR", status_obj(410, "Expired", "too old resource version (history expired)"))
                    break
                if queue in self.stalled:
                    continue
                etype, p, ns, obj = item
                if self._selected(target, p, ns, obj, fields):
                    await send(etype, obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.pop(queue, None)
            self.stalled.discard(queue)
        return response

    # --- control and discovery -------------------------------------------------------------------

    async def expire(self, _: web.Request) -> web.Response:
        self.history.clear()
        self.floor = self.rv
        for q in list(self.watchers):
            q.put_nowait(None)
        return web.json_response({"floor": self.floor, "closedWatches": len(self.watchers)})

    async def compact(self, _: web.Request) -> web.Response:
        self.history.clear()
        self.floor = self.rv
        return web.json_response({"floor": self.floor, "openWatches": len(self.watchers)})

    async def stall(self, _: web.Request) -> web.Response:
        self.stalled |= set(self.watchers)
        return web.json_response({"stalledWatches": len(self.watchers)})

    async def plan_conflict(self, request: web.Request) -> web.Response:
        planned = await request.json()
        self.conflicts.append({"method": planned["method"], "path": planned["path"], "times": int(planned.get("times", 1)),
                               "patch": planned.get("patch")})
        return web.json_response({"planned": len(self.conflicts)})

    def app(self) -> web.Application:
        app = web.Application()
        groups: dict[str, list[str]] = {}
        for (group, _), resource in self.resources.items():
            if group:
                groups.setdefault(group, [])
                groups[group] += [v for v in resource.versions if v not in groups[group]]
        app.router.add_get("/version", lambda _: web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"}))
        app.router.add_get("/api", lambda _: web.json_response({"kind": "APIVersions", "versions": ["v1"]}))
        app.router.add_get("/apis", lambda _: web.json_response({"kind": "APIGroupList", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs]} for g, vs in groups.items()
        ]}))
        app.router.add_post("/_control/expire", self.expire)
        app.router.add_post("/_control/compact", self.compact)
        app.router.add_post("/_control/stall", self.stall)
        app.router.add_post("/_control/conflict", self.plan_conflict)
        app.router.add_get("/_control/requests", lambda _: web.json_response(self.requests))
        app.router.add_get("/_control/denied", lambda _: web.json_response(self.denied))
        app.router.add_get("/_control/pruned", lambda _: web.json_response(self.pruned))
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, default=None)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--kustomization", type=Path, default=None,
                        help="a kustomization directory: its CRDs are served, its RBAC is enforced")
    parser.add_argument("--token", action="append", default=[], help="TOKEN=USER (repeatable)")
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    args = parser.parse_args()
    manifests = load_kustomization(args.kustomization) if args.kustomization else None
    tokens = dict(t.split("=", 1) for t in args.token)
    try:
        server = FakeApiServer(state=args.state, history=args.history, manifests=manifests, tokens=tokens,
                               bookmark_interval=args.bookmark_interval)
    except ValueError as err:
        sys.exit(f"fakekube: {err}")
    web.run_app(server.app(), host="127.0.0.1", port=args.port, print=None, shutdown_timeout=0.5)


if __name__ == "__main__":
    main()
