"""`meshserve apply|delete -f` and `meshserve get isvc|predictors|servingruntimes`: the local
resource store (the scheduler's `/v1/resources`) used like `kubectl` against a cluster.

Every document is checked before anything is sent, the way the API server would: its kind must be
one the store keeps, CRs must match the CRD schema shipped with the controller
(`meshserve.controller.crdschema`, the same messages as `kubectl apply --validate=strict`),
ServingRuntimes must pass the controller's runtime rules (upstream's admission webhook), and the
`model-serving-config` ConfigMap must parse. A spec that is valid by schema but wrong for ModelMesh
(e.g. both `storageUri` and `storage.path`) is accepted, as in a cluster: the controller reports
it as `InvalidSpec` in the status.

Valid documents are applied, invalid ones are reported one by one (file, document number, kind,
name, every error) and the command exits 1, as kubectl does.

`kind: Secret`: only the storage-config Secret (the name the config's `storageSecretName` gives,
default `storage-config`), with `data` (base64) and/or `stringData`, each key one JSON object
that the controller's `parse_storage_secret` accepts (errors name the key and the field, never a
value). The store keeps it as a carrier ConfigMap (`meshserve.controller.local.secret_carrier`);
`get secrets` lists names and keys, `get secret <name>` each key's storage type: never a value.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

KINDS = {
    "InferenceService": True,
    "Predictor": True,
    "ServingRuntime": True,
    "ClusterServingRuntime": False,
    "ConfigMap": True,
    "Secret": True,
}
"""Kinds the local store keeps -> namespaced (a Secret as a carrier ConfigMap)."""
ALIASES = {
    "isvc": "InferenceService", "isvcs": "InferenceService", "inferenceservice": "InferenceService",
    "inferenceservices": "InferenceService",
    "predictor": "Predictor", "predictors": "Predictor",
    "servingruntime": "ServingRuntime", "servingruntimes": "ServingRuntime",
    "clusterservingruntime": "ClusterServingRuntime", "clusterservingruntimes": "ClusterServingRuntime",
    "secret": "Secret", "secrets": "Secret",
}


@dataclass(frozen=True)
class Document:
    source: str
    index: int
    body: Any

    @property
    def kind(self) -> str:
        return str(self.body.get("kind") or "") if isinstance(self.body, Mapping) else ""

    @property
    def name(self) -> str:
        meta = self.body.get("metadata") if isinstance(self.body, Mapping) else None
        return str(meta.get("name") or "") if isinstance(meta, Mapping) else ""

    def where(self) -> str:
        what = f"{self.kind or '?'} {self.name or '?'}"
        return f"{self.source} (document {self.index}, {what})"


class LoadError(Exception):
    pass


def load_documents(paths: Iterable[str], *, stdin: Any = None) -> list[Document]:
    """Every non-empty YAML document of every file (`-` is stdin), in order."""
    docs: list[Document] = []
    for path in paths:
        try:
            text = (stdin or sys.stdin).read() if path == "-" else Path(path).read_text()
        except OSError as err:
            raise LoadError(f"{path}: {err.strerror or err}") from None
        try:
            parsed = list(yaml.safe_load_all(text))
        except yaml.YAMLError as err:
            raise LoadError(f"{path}: not valid YAML: {err}") from None
        n = 0
        for body in parsed:
            if body is None:
                continue
            n += 1
            docs.append(Document(source="<stdin>" if path == "-" else path, index=n, body=body))
    return docs


def validate(doc: Document) -> list[str]:
    """Errors of one document (empty: the store would take it)."""
    body = doc.body
    if not isinstance(body, Mapping):
        return ["a resource must be a YAML mapping"]
    errors: list[str] = []
    if not doc.kind:
        errors.append("kind: required")
    elif doc.kind not in KINDS:
        errors.append(f"kind {doc.kind!r} is not supported here (supported: {', '.join(sorted(KINDS))})")
    if not doc.name:
        errors.append("metadata.name: required")
    if errors:
        return errors
    if doc.kind == "Secret":
        return validate_secret(body)
    from meshserve.controller import crdschema

    errors += crdschema.validate_document(body)
    if errors:
        return errors
    if doc.kind in ("ServingRuntime", "ClusterServingRuntime"):
        from meshserve.controller.runtimes import parse_runtime, validate_runtime
        from meshserve.controller.serving_config import ServingConfig

        runtime = parse_runtime(body, cluster_scoped=doc.kind == "ClusterServingRuntime")
        errors += validate_runtime(runtime, built_in_server_types=ServingConfig().built_in_server_types)
    elif doc.kind == "ConfigMap" and doc.name == "model-serving-config":
        from meshserve.controller.serving_config import ConfigError, parse_configmap_data

        data = body.get("data")
        if data is not None and not (isinstance(data, Mapping) and all(isinstance(v, str) for v in data.values())):
            errors.append("data: must map keys to strings")
        else:
            try:   # meshserve goes further than a cluster here: a bad config is refused, not just logged
                parse_configmap_data(data)
            except ConfigError as err:
                errors.append(f"data: {err}")
    return errors


def config_warnings(doc: Document) -> list[str]:
    """What the controller will warn about in a valid model-serving-config (an unknown key with
    the nearest valid one, a key not applied yet); empty for any other document."""
    if doc.kind != "ConfigMap" or doc.name != "model-serving-config" or not isinstance(doc.body, Mapping):
        return []
    from meshserve.controller.serving_config import ConfigError, parse_configmap_data

    try:
        return list(parse_configmap_data(doc.body.get("data")).warnings)
    except ConfigError:
        return []


def validate_secret(body: Mapping[str, Any]) -> list[str]:
    """A storage-config Secret: string values, key names, and every key a storage config."""
    import base64
    import binascii

    from meshserve.controller.local import valid_key_name
    from meshserve.controller.storage_config import parse_storage_secret

    errors: list[str] = []
    kind = body.get("type")
    if kind not in (None, "Opaque"):
        errors.append(f"type: {kind!r} is not supported here (a storage-config Secret is Opaque)")
    for field in ("data", "stringData"):
        values = body.get(field)
        if values is None:
            continue
        if not isinstance(values, Mapping) or not all(isinstance(v, str) for v in values.values()):
            errors.append(f"{field}: must map keys to strings")
            continue
        for key, value in values.items():
            if not valid_key_name(str(key)):
                errors.append(f"{field}[{key!r}]: a key must consist of letters, digits, '-', '_' or '.'")
            elif field == "data":
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    errors.append(f"data[{key!r}]: the value is not valid base64 (use stringData for plain text)")
    if errors:
        return errors
    if not body.get("data") and not body.get("stringData"):
        return ["data or stringData: a storage-config Secret needs at least one key"]
    from meshserve.controller.local import secret_data

    parsed = parse_storage_secret(secret_data(body))
    return [f"key {key!r}: {why}" for key, why in sorted(parsed.errors.items())]


def storage_secret_name(client: AdminClient, *, namespace: str) -> str:
    """The Secret name the config's `storageSecretName` gives (default `storage-config`)."""
    from meshserve.controller.serving_config import ConfigError, ServingConfig, parse_configmap_data

    response = client.request("GET", _resource_path("ConfigMap", namespace, "model-serving-config"))
    if response.status_code != 200:
        return ServingConfig().storage_secret_name
    try:
        return parse_configmap_data(response.json().get("data")).config.storage_secret_name
    except (ConfigError, ValueError, AttributeError):
        return ServingConfig().storage_secret_name


class AdminClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise LoadError(f"cannot reach the scheduler admin API at {self.base_url}: {err}") from None


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, Mapping):
        return str(body.get("error") or body.get("detail") or body)
    return str(body)


def _resource_path(kind: str, namespace: str, name: str) -> str:
    if kind == "Secret":   # kept as its carrier ConfigMap
        from meshserve.controller.local import carrier_name

        kind, name = "ConfigMap", carrier_name(name)
    return f"/v1/resources/{kind}/{namespace if KINDS.get(kind, True) else '_'}/{name}"


def _namespace(doc: Document, default: str) -> str:
    meta = doc.body.get("metadata") or {}
    return str(meta.get("namespace") or default) if KINDS.get(doc.kind, True) else ""


def _short(kind: str) -> str:
    return f"{kind.lower()}.serving.kserve.io" if kind not in ("ConfigMap", "Secret") else kind.lower()


def apply(client: AdminClient, docs: list[Document], *, namespace: str, out: Any, err: Any) -> int:
    failed = 0
    valid: list[Document] = []
    for doc in docs:
        problems = validate(doc)
        if problems:
            failed += 1
            print(f"error: {doc.where()} is invalid:", file=err)
            for p in problems:
                print(f"  - {p}", file=err)
        else:
            valid.append(doc)
            for warning in config_warnings(doc):
                print(f"warning: {doc.where()}: {warning}", file=err)
    secrets = [doc for doc in valid if doc.kind == "Secret"]
    if secrets:
        wanted = {}
        for ns in {_namespace(doc, namespace) for doc in secrets}:
            wanted[ns] = storage_secret_name(client, namespace=ns)
        for doc in secrets:
            expected = wanted[_namespace(doc, namespace)]
            if doc.name != expected:
                failed += 1
                valid.remove(doc)
                print(f"error: {doc.where()} is invalid:", file=err)
                print(f"  - metadata.name: only the storage-config Secret ({expected!r}, the config's "
                      "storageSecretName) is kept in local mode", file=err)
    if valid:
        from meshserve.controller.local import carrier_name, secret_carrier

        bodies = []
        for doc in valid:
            if doc.kind == "Secret":
                bodies.append(secret_carrier(doc.body, namespace=_namespace(doc, namespace)))
                continue
            body = dict(doc.body)
            meta = dict(body.get("metadata") or {})
            if KINDS[doc.kind]:
                meta["namespace"] = _namespace(doc, namespace)
            body["metadata"] = meta
            bodies.append(body)
        response = client.request("POST", "/v1/resources", json=bodies)
        if response.status_code >= 400:
            print(f"error: the store refused the documents ({response.status_code}): {_error_text(response)}", file=err)
            return 1
        carriers = {carrier_name(doc.name): doc.name for doc in valid if doc.kind == "Secret"}
        for item in response.json().get("items", []):
            if item["kind"] == "ConfigMap" and item["name"] in carriers:
                print(f"secret/{carriers[item['name']]} {item['action']}", file=out)
            else:
                print(f"{_short(item['kind'])}/{item['name']} {item['action']}", file=out)
    return 1 if failed else 0


def delete(client: AdminClient, docs: list[Document], *, namespace: str, out: Any, err: Any) -> int:
    failed = 0
    for doc in docs:
        if not doc.kind or not doc.name or doc.kind not in KINDS:
            print(f"error: {doc.where()}: needs a supported kind and metadata.name", file=err)
            failed += 1
            continue
        response = client.request("DELETE", _resource_path(doc.kind, _namespace(doc, namespace), doc.name))
        if response.status_code == 404:
            print(f'Error from server (NotFound): {_short(doc.kind)} "{doc.name}" not found', file=err)
            failed += 1
        elif response.status_code >= 400:
            print(f"error: deleting {doc.where()}: {response.status_code} {_error_text(response)}", file=err)
            failed += 1
        else:
            print(f'{_short(doc.kind)} "{doc.name}" deleted', file=out)
    return 1 if failed else 0


# --- get ---------------------------------------------------------------------------------------


def age(created: Any, *, now: datetime | None = None) -> str:
    if not isinstance(created, str) or not created:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = max(int(((now or datetime.now(UTC)) - then).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def _ready(obj: Mapping[str, Any]) -> str:
    for cond in _get(obj, "status", "conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return str(cond.get("status") or "")
    return ""


def rows_for(kind: str, items: list[Mapping[str, Any]], *, now: datetime | None = None) -> tuple[list[str], list[list[str]]]:
    """kubectl-like columns (the CRDs' printer columns, with ModelMesh's status where KServe's are empty)."""
    rows: list[list[str]] = []
    if kind == "InferenceService":
        header = ["NAME", "URL", "READY", "ACTIVE", "TARGET", "TRANSITION", "REASON", "AGE"]
        for o in items:
            ms = _get(o, "status", "modelStatus") or {}
            rows.append([
                str(_get(o, "metadata", "name")), str(_get(o, "status", "url") or ""), _ready(o),
                str(_get(ms, "states", "activeModelState") or ""), str(_get(ms, "states", "targetModelState") or ""),
                str(ms.get("transitionStatus") or ""), str(_get(ms, "lastFailureInfo", "reason") or ""),
                age(_get(o, "metadata", "creationTimestamp"), now=now),
            ])
    elif kind == "Predictor":
        header = ["NAME", "TYPE", "AVAILABLE", "ACTIVEMODEL", "TARGETMODEL", "TRANSITION", "AGE"]
        for o in items:
            st = o.get("status") or {}
            avail = st.get("available")
            rows.append([
                str(_get(o, "metadata", "name")), str(_get(o, "spec", "modelType", "name") or ""),
                "" if avail is None else str(bool(avail)).lower(), str(st.get("activeModelState") or ""),
                str(st.get("targetModelState") or ""), str(st.get("transitionStatus") or ""),
                age(_get(o, "metadata", "creationTimestamp"), now=now),
            ])
    else:
        header = ["NAME", "KIND", "DISABLED", "MODELTYPE", "CONTAINERS", "AGE"]
        for o in items:
            spec = o.get("spec") or {}
            rows.append([
                str(_get(o, "metadata", "name")), str(o.get("kind") or ""), str(bool(spec.get("disabled", False))).lower(),
                ",".join(str(f.get("name")) for f in spec.get("supportedModelFormats") or [] if isinstance(f, Mapping)),
                ",".join(str(c.get("name")) for c in spec.get("containers") or [] if isinstance(c, Mapping)),
                age(_get(o, "metadata", "creationTimestamp"), now=now),
            ])
    return header, rows


def secret_rows(items: list[Mapping[str, Any]], *, now: datetime | None = None) -> tuple[list[str], list[list[str]]]:
    """`get secrets`: names and keys, never values."""
    from meshserve.controller.local import carried_secret

    rows: list[list[str]] = []
    for obj in items:
        carried = carried_secret(obj)
        if carried is None:
            continue
        name, data = carried
        rows.append([name, "Opaque", str(len(data)), ",".join(sorted(data)),
                     age(_get(obj, "metadata", "creationTimestamp"), now=now)])
    return ["NAME", "TYPE", "DATA", "KEYS", "AGE"], rows


def secret_key_rows(obj: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """`get secret <name>`: each key, its storage type and whether the controller accepts it
    (the reason names the field, never a value)."""
    from meshserve.controller.local import carried_secret
    from meshserve.controller.storage_config import parse_storage_secret

    carried = carried_secret(obj)
    data = carried[1] if carried is not None else {}
    parsed = parse_storage_secret(data)
    rows = []
    for key in sorted(data):
        entry = parsed.entries.get(key)
        rows.append([key, entry.type if entry else "-", "ok" if entry else parsed.errors.get(key, "invalid")])
    return ["KEY", "TYPE", "STATUS"], rows


def _print_table(header: list[str], rows: list[list[str]], out: Any) -> None:
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
    print("   ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip(), file=out)
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip(), file=out)


def get_secrets(client: AdminClient, name: str | None, *, namespace: str, out: Any, err: Any) -> int:
    if name:
        response = client.request("GET", _resource_path("Secret", namespace, name), params={"secretValues": "true"})
        if response.status_code == 404:
            print(f'Error from server (NotFound): secrets "{name}" not found', file=err)
            return 1
        if response.status_code >= 400:
            print(f"error: {response.status_code} {_error_text(response)}", file=err)
            return 1
        header, rows = secret_key_rows(response.json())
    else:
        response = client.request("GET", "/v1/resources", params={"kind": "ConfigMap", "namespace": namespace})
        if response.status_code >= 400:
            print(f"error: {response.status_code} {_error_text(response)}", file=err)
            return 1
        header, rows = secret_rows(response.json().get("items", []))
    if not rows:
        print(f"No resources found in {namespace} namespace.", file=err)
        return 0
    _print_table(header, rows, out)
    return 0


def get(client: AdminClient, what: str, *, namespace: str, out: Any, err: Any, name: str | None = None) -> int:
    kind = ALIASES.get(what.lower())
    if kind is None:
        print(f"error: unknown resource {what!r} (isvc, predictors, servingruntimes, secrets)", file=err)
        return 1
    if kind == "Secret":
        return get_secrets(client, name, namespace=namespace, out=out, err=err)
    kinds = [kind] if kind not in ("ServingRuntime",) else ["ServingRuntime", "ClusterServingRuntime"]
    items: list[Mapping[str, Any]] = []
    for k in kinds:
        params = {"kind": k, **({"namespace": namespace} if KINDS[k] else {})}
        response = client.request("GET", "/v1/resources", params=params)
        if response.status_code >= 400:
            print(f"error: {response.status_code} {_error_text(response)}", file=err)
            return 1
        items += response.json().get("items", [])
    if not items:
        print(f"No resources found in {namespace} namespace.", file=err)
        return 0
    header, rows = rows_for("ServingRuntime" if kind == "ClusterServingRuntime" else kind, items)
    _print_table(header, rows, out)
    return 0


# -- runtime pod status in local mode --------------------------------------------------------------
LOCAL_PODS_CONFIGMAP = "meshserve-local-pods"
"""ConfigMap in the controller's namespace where local mode's runtime pod supervisor keeps each
pod's status (what the kubelet keeps in a Pod's status): one data key per pod id, its value a
JSON object {"restarts", "lastRestart", "lastExit", "deployment", "pids"}."""


def local_pods_document(namespace: str, pods: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ConfigMap that records `pods` (pod id -> status)."""
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": LOCAL_PODS_CONFIGMAP, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "meshserve-local"}},
        "data": {pod: json.dumps(dict(status), sort_keys=True) for pod, status in sorted(pods.items())},
    }


def local_pod_status(client: AdminClient, *, namespace: str) -> dict[str, dict[str, Any]]:
    """Pod id -> status from the local pods ConfigMap; {} when there is none (Kubernetes mode,
    a stack without the controller) or it cannot be read."""
    try:
        response = client.request("GET", _resource_path("ConfigMap", namespace, LOCAL_PODS_CONFIGMAP))
    except LoadError:
        return {}
    if response.status_code != 200:
        return {}
    out: dict[str, dict[str, Any]] = {}
    try:
        data = response.json().get("data") or {}
        for pod, text in data.items():
            value = json.loads(text)
            if isinstance(value, dict):
                out[str(pod)] = value
    except (ValueError, AttributeError):
        return {}
    return out


def restarts_column(status: Mapping[str, Any] | None, *, now: datetime | None = None) -> str:
    """kubectl's RESTARTS: `0`, `2 (15s ago)`; `-` for a pod nobody supervises here."""
    if not status:
        return "-"
    restarts = int(status.get("restarts") or 0)
    when = status.get("lastRestart")
    if not restarts or not when:
        return str(restarts)
    return f"{restarts} ({age(str(when), now=now)} ago)"
