"""A runtime pod's Deployment as Podman commands, and the in-pod size table (pure; no I/O).

`bench.sizes.pod` renders the controller's real Deployment (`build_runtime_deployment`) and
runs its pod template with Podman the way a kubelet would. What this module does for it:

* `resolve_env`: a container's `env` list as the kubelet resolves it: downward-API
  `fieldRef`s (`metadata.name`, `status.podIP`, ...) from the values given, then `$(VAR)`
  references to variables defined earlier in the list (Kubernetes' dependent variables;
  `$$(VAR)` stays literal, an undefined `$(VAR)` is kept as written, as the kubelet does).
* `run_args`: one container of the pod template as `podman run` arguments in a pod that shares
  pid/net/ipc (`shareProcessNamespace: true`): the resolved env, the volume mounts (each volume
  given as a host folder), `securityContext` (runAsUser/runAsGroup, readOnlyRootFilesystem,
  capabilities.drop, allowPrivilegeEscalation: false), the memory limit and the command/args
  (the image's own CMD when the container gives none). Probes and preStop hooks have no
  Podman equivalent here; the benchmark waits for the pod to register instead.
* `cgroup_working_set` / `parse_memory_stat`: a container's memory as the kubelet counts it
  (`usage - total_inactive_file` on cgroup v1, `memory.current - inactive_file` on v2): the
  "cgroup growth" column is the growth of that working set over one load.
* `table`: the one table `python -m bench.sizes --in-pod` prints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshserve.controller.deployments import parse_quantity

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, defined: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion of one env value against the variables defined before it."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return defined.get(name, m.group(0))
    return _REF.sub(sub, value)


def resolve_env(env: Sequence[Mapping[str, Any]], fields: Mapping[str, str]) -> dict[str, str]:
    """A container's env list resolved as the kubelet does (see the module's docstring).

    Raises ValueError for a `valueFrom` this pod cannot resolve (a fieldRef not in `fields`,
    a secretKeyRef/configMapKeyRef/resourceFieldRef): better than starting with it missing."""
    out: dict[str, str] = {}
    for var in env:
        name = str(var["name"])
        if "valueFrom" in var:
            ref = (var["valueFrom"] or {}).get("fieldRef")
            path = str((ref or {}).get("fieldPath"))
            if path not in fields:
                raise ValueError(f"env {name}: cannot resolve valueFrom {var['valueFrom']!r} outside a cluster")
            out[name] = fields[path]
        else:
            out[name] = expand(str(var.get("value", "")), out)
    return out


@dataclass(frozen=True)
class Volume:
    host_path: str  # the host folder that stands for the pod's volume (emptyDir, Secret, ...)
    read_only: bool = False


def run_args(
    container: Mapping[str, Any],
    *,
    pod: str,
    name: str,
    pod_security: Mapping[str, Any],
    volumes: Mapping[str, Volume],
    fields: Mapping[str, str],
    env_overrides: Mapping[str, str] | None = None,
) -> list[str]:
    """`podman run` arguments (after `podman run`) for one container of the pod template."""
    sc = {**{k: v for k, v in pod_security.items() if k in ("runAsUser", "runAsGroup")},
          **(container.get("securityContext") or {})}
    args = ["--detach", "--pod", pod, "--name", name, "--pull", "never"]
    user = sc.get("runAsUser")
    if user is not None:
        group = sc.get("runAsGroup", user)
        args += ["--user", f"{user}:{group}"]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
        args.append("--read-only-tmpfs=false")  # /tmp is the pod's emptyDir, as in the cluster
    for cap in (sc.get("capabilities") or {}).get("drop") or []:
        args += ["--cap-drop", str(cap)]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    if limit is not None:
        args += ["--memory", str(parse_quantity(limit))]
    env = resolve_env(container.get("env") or [], fields)
    env.update(env_overrides or {})
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    for mount in container.get("volumeMounts") or []:
        vol = volumes.get(str(mount["name"]))
        if vol is None:
            raise ValueError(f"container {container.get('name')}: no host folder for volume {mount['name']!r}")
        ro = vol.read_only or bool(mount.get("readOnly"))
        args += ["--volume", f"{vol.host_path}:{mount['mountPath']}{':ro' if ro else ''}"]
    command = [str(w) for w in container.get("command") or []]
    if command:
        args += ["--entrypoint", command[0]]
    args.append(str(container["image"]))
    args += command[1:] + [str(w) for w in container.get("args") or []]
    return args


def parse_memory_stat(text: str) -> dict[str, int]:
    """A cgroup's memory.stat as name -> value."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def cgroup_working_set(usage: int, stat: Mapping[str, int]) -> int:
    """The kubelet's working set: usage minus the inactive file cache (v1 `total_inactive_file`,
    v2 `inactive_file`), never below zero."""
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return max(0, usage - inactive)


@dataclass(frozen=True)
class Row:
    model: str
    format: str
    disk: int
    local: int
    in_pod: int
    in_pod_measured: bool  # False: no credible measurement (see `table`)
    cgroup: int  # growth of the model server container's cgroup working set over the load
    local_measured: bool = True


MiB = 2**20


def _mib(n: int) -> str:
    return f"{n / MiB:.1f}"


def table(rows: Sequence[Row]) -> str:
    """The in-pod table: MiB figures, the in-pod/local ratio. `*` marks a size that is not a
    credible measurement (the scheduler's `placed` event says `measured: false`: the pod did not
    grow, or grew by under half the model's files), so the scheduler kept its reservation."""
    header = ("model", "format", "disk MiB", "local MiB", "in-pod MiB", "cgroup MiB", "in-pod/local")
    body = [
        (r.model, r.format, _mib(r.disk), _mib(r.local) + ("" if r.local_measured else "*"),
         _mib(r.in_pod) + ("" if r.in_pod_measured else "*"),
         _mib(r.cgroup), f"{r.in_pod / r.local:.2f}" if r.local > 0 else "-")
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths, strict=True))))
    if any(not (r.in_pod_measured and r.local_measured) for r in rows):
        lines.append("* not a credible measurement (no growth, or under half the files): the scheduler's reservation")
    return "\n".join(lines)
