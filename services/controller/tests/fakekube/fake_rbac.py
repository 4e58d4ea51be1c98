"""RBAC as the API server's authorizer evaluates it, over the manifests of a kustomization.

`load_kustomization(dir)` reads the YAML a kustomization lists (files and sub-directories with
their own kustomization.yaml, recursively), and gives every namespaced object without a namespace
the kustomization's `namespace:`, as `kubectl kustomize` does. No other transformer is applied:
what matters here are CRDs, (Cluster)Roles and (Cluster)RoleBindings.

`Authorizer.allowed(user, attrs)`: a request is allowed when some rule of a role bound to the
user grants it. A ClusterRoleBinding's ClusterRole grants everywhere; a RoleBinding's Role or
ClusterRole grants only in the RoleBinding's namespace. A rule matches when its `apiGroups`,
`verbs` and `resources` name the request's (or `*`), a subresource is named `resource/sub`
(`*/sub`, `*`), and `resourceNames`, when set, holds the object's name (never for list, watch
or create of a collection). Subjects: a ServiceAccount (by name and namespace), a User by its
full name, the groups `system:serviceaccounts`, `system:serviceaccounts:<ns>`, `system:authenticated`.

Only PyYAML and the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace", "ClusterServingRuntime",
                 "PriorityClass", "StorageClass", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}


def load_kustomization(directory: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    namespace = spec.get("namespace")
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        path = directory / entry
        if path.is_dir():
            found = load_kustomization(path)
        else:
            found = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        for doc in found:
            meta = doc.setdefault("metadata", {})
            if namespace and doc.get("kind") not in CLUSTER_KINDS:
                meta["namespace"] = namespace
            docs.append(doc)
    return docs


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str          # "" for cluster-scoped requests (and all-namespace lists)
    name: str


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _groups(user: str) -> set[str]:
    groups = {"system:authenticated"}
    parts = user.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        groups |= {"system:serviceaccounts", f"system:serviceaccounts:{parts[2]}"}
    return groups


def _subject_matches(subject: dict[str, Any], user: str, binding_ns: str) -> bool:
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        return user == service_account_user(str(subject.get("namespace") or binding_ns), str(subject.get("name")))
    if kind == "User":
        return user == subject.get("name")
    if kind == "Group":
        return subject.get("name") in _groups(user)
    return False


def _rule_matches(rule: dict[str, Any], attrs: Attributes) -> bool:
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attrs.group not in groups:
        return False
    wanted = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or []
    if not any(r in ("*", wanted) or (attrs.subresource and r == f"*/{attrs.subresource}") for r in resources):
        return False
    names = rule.get("resourceNames") or []
    return not names or (bool(attrs.name) and attrs.name in names)


class Authorizer:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.cluster_roles = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ClusterRole"}
        self.roles = {(d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs if d.get("kind") == "Role"}
        self.bindings = [d for d in docs if d.get("kind") in ("ClusterRoleBinding", "RoleBinding")]

    def _rules(self, user: str) -> list[tuple[str | None, dict[str, Any]]]:
        """(namespace the rule is limited to, or None for everywhere; rule)."""
        out: list[tuple[str | None, dict[str, Any]]] = []
        for binding in self.bindings:
            ns = str(binding["metadata"].get("namespace") or "")
            if not any(_subject_matches(s, user, ns) for s in binding.get("subjects") or []):
                continue
            ref = binding.get("roleRef") or {}
            if ref.get("kind") == "ClusterRole":
                role = self.cluster_roles.get(ref.get("name"))
            else:
                role = self.roles.get((ns, ref.get("name")))
            scope = None if binding["kind"] == "ClusterRoleBinding" else ns
            for rule in (role or {}).get("rules") or []:
                out.append((scope, rule))
        return out

    def allowed(self, user: str, attrs: Attributes) -> bool:
        return any((scope is None or scope == attrs.namespace) and _rule_matches(rule, attrs)
                   for scope, rule in self._rules(user))

    @staticmethod
    def forbidden_message(user: str, attrs: Attributes) -> str:
        res = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
        what = f'{res} "{attrs.name}"' if attrs.name else res
        wanted = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
        return f'{what} is forbidden: User "{user}" cannot {attrs.verb} resource "{wanted}" in API group "{attrs.group}" {where}'
