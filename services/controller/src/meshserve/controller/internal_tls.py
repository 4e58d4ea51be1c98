"""Internal TLS in Kubernetes mode: the TLS Secret the controller mounts into the pods it
renders (the runtime pods' puller container, each namespace's router), and the
`MESHSERVE_INTERNAL_TLS__*` env that points every internal gRPC hop of those processes at it
(see `meshserve.common.settings`: the same block local mode sets per process).

Pure. The Secret is only referenced by a volume (the kubelet mounts it; the controller never
reads it, so it needs no RBAC on Secrets for this). Keys: `tls.crt`, `tls.key`, `ca.crt` (what
cert-manager writes); it must exist in every served namespace, else the pods stay
ContainerCreating (the kubelet's event names the Secret). Mounted read-only at `TLS_DIR`.
`server_name` (optional) becomes `MESHSERVE_INTERNAL_TLS__SERVER_NAME`: the name the peers'
certificate carries, for peers dialed by IP (runtime pods).

`add_to_pod(pod_spec, container=, tls=)` adds the volume, the mount and the env to one
container of a pod spec (a copy: the argument is not changed).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

TLS_DIR = "/etc/meshserve/internal-tls"
VOLUME = "internal-tls"


@dataclass(frozen=True)
class InternalTls:
    secret_name: str
    server_name: str = ""

    def __post_init__(self) -> None:
        if not self.secret_name:
            raise ValueError("the internal TLS Secret needs a name")


def env(tls: InternalTls) -> list[dict[str, str]]:
    out = [
        {"name": "MESHSERVE_INTERNAL_TLS__CERT_FILE", "value": f"{TLS_DIR}/tls.crt"},
        {"name": "MESHSERVE_INTERNAL_TLS__KEY_FILE", "value": f"{TLS_DIR}/tls.key"},
        {"name": "MESHSERVE_INTERNAL_TLS__CA_FILE", "value": f"{TLS_DIR}/ca.crt"},
    ]
    if tls.server_name:
        out.append({"name": "MESHSERVE_INTERNAL_TLS__SERVER_NAME", "value": tls.server_name})
    return out


def add_to_pod(pod_spec: dict[str, Any], *, container: str, tls: InternalTls | None) -> dict[str, Any]:
    """`pod_spec` with the Secret mounted into `container` and its env set (unchanged when
    `tls` is None). Raises ValueError when the pod has no such container."""
    if tls is None:
        return pod_spec
    pod = copy.deepcopy(pod_spec)
    target = next((c for c in pod.get("containers") or [] if c.get("name") == container), None)
    if target is None:
        raise ValueError(f"the pod has no container {container!r} to mount the internal TLS Secret into")
    pod.setdefault("volumes", []).append({"name": VOLUME, "secret": {"secretName": tls.secret_name}})
    target.setdefault("volumeMounts", []).append({"name": VOLUME, "mountPath": TLS_DIR, "readOnly": True})
    names = {e["name"] for e in env(tls)}
    target["env"] = [e for e in target.get("env") or [] if e.get("name") not in names] + env(tls)
    return pod
