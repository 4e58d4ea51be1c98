"""What the OVMS adapter decides, without I/O: the model folder, config.json, the statuses.

OpenVINO Model Server serves a model from its `base_path`: a folder of numeric version
folders (`1/`, `2/`, ...), of which it loads the highest by default (version policy
"latest"); in that version folder it loads the first `.xml` + `.bin` pair (OpenVINO IR) or
the first `.onnx` file. The puller downloads a model into `<model dir>/<model id>/`, which
becomes the base_path. `layout` turns the downloaded names into that shape, following the
cases of upstream's OVMS adapter (modelmesh-runtime-adapter
`model-mesh-ovms-adapter/server/adaptmodellayout.go`):

- numeric folders at the top (`1/`, `5/`) are the versions already: kept in place; OVMS
  serves the highest (upstream links only the highest; the others are ignored by OVMS);
- otherwise every file moves into version `1/`; a folder that holds nothing but one
  non-numeric folder is looked into first (a storage path one level above the model);
- the single file of an `onnx` model becomes `1/model.onnx` whatever its name (upstream
  renames it so);
- the served version must then hold, directly, what OVMS loads for the format: one `.xml`
  and its `.bin` (the one of the same name, or the only one) for `openvino_ir`, one `.onnx`
  for `onnx`. Where OVMS would pick the first of several files arbitrarily, the load is
  refused here with the names found.

`config_json` writes OVMS's config file (`{"model_config_list": [{"config": {"name",
"base_path"}}]}`, the whole list every time, as upstream's adapter does), and
`load_outcome` reads OVMS's model status (`{"model_version_status": [{"version", "state",
"status": {"error_code", "error_message"}}]}`) into loaded / still loading / failed with a
message in OVMS's own words.

Never: touch files, sockets or clocks (ovms_adapter applies the plans).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from meshserve.common.errors import FailedPrecondition
from meshserve.puller.model_files import is_version, model_files

CONFIG_FILE = "model_config_list.json"  # upstream's name for OVMS's --config_path (in the model dir)

FORMATS = ("onnx", "openvino_ir")
ALIASES = {"openvino": "openvino_ir"}  # upstream's adapter and its tests say "openvino"
ONNX_FILE = "model.onnx"


def model_format(model_type: str) -> str:
    """The format OVMS will load: `model_type` lowercased, without a `:version` suffix."""
    name = model_type.split(":", 1)[0].strip().lower()
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        raise FailedPrecondition(
            f"the OVMS runtime serves {' and '.join(FORMATS)} models, not {model_type or 'a model without a format'!r}"
        )
    return name


@dataclass(frozen=True)
class Layout:
    moves: list[tuple[str, str]] = field(default_factory=list)  # (from, to), relative to the model folder
    version: int = 1  # the version OVMS will serve
    model_file: str = ""  # what OVMS will load in it (the .xml or .onnx), relative to the folder


def _head(name: str) -> str:
    return name.split("/", 1)[0]


def layout(*, model_type: str, files: Sequence[str]) -> Layout:
    """`files`: relative POSIX paths of every file in the downloaded folder."""
    fmt = model_format(model_type)
    visible = model_files(files, config_file="")
    if not visible:
        raise FailedPrecondition("the model folder holds no model file")

    # a folder holding only one non-numeric folder: the model is inside it
    prefix = ""
    while True:
        rel = [n[len(prefix):] for n in visible]
        heads = {_head(n) for n in rel}
        if len(heads) == 1 and all("/" in n for n in rel) and not next(iter(heads)).isdigit():
            prefix += next(iter(heads)) + "/"
            continue
        break
    if "0" in {_head(n) for n in rel if "/" in n}:
        raise FailedPrecondition("OVMS numbers model versions from 1: the folder 0/ is not a version")

    # OVMS sees every numeric folder at the top, also one holding only hidden or partial files
    on_disk = {int(_head(n)) for n in files if "/" in n and is_version(_head(n))}
    versions = sorted({int(_head(n)) for n in rel if "/" in n and is_version(_head(n))})
    if versions:
        moves = [(prefix + n, n) for n in rel if "/" in n and is_version(_head(n))]
    elif fmt == "onnx" and len(rel) == 1:
        moves, versions = [(prefix + rel[0], posixpath.join("1", ONNX_FILE))], [1]
    else:
        moves, versions = [(prefix + n, posixpath.join("1", n)) for n in rel], [1]
    served = max([*versions, *on_disk])
    moves = [(src, dst) for src, dst in moves if src != dst]

    moved = {src for src, _ in moves}
    final = sorted({dst for _, dst in moves} | {n for n in visible if n not in moved})
    folder = f"{served}/"
    direct = [p[len(folder):] for p in final if p.startswith(folder) and "/" not in p[len(folder):]]
    return Layout(moves=moves, version=served, model_file=folder + _model_file(fmt, served, direct))


def _model_file(fmt: str, version: int, names: list[str]) -> str:
    found = ", ".join(names) or "none"
    if fmt == "onnx":
        onnx = [n for n in names if n.endswith(".onnx")]
        if len(onnx) != 1:
            raise FailedPrecondition(f"version {version} of the onnx model needs one .onnx file (found: {found})")
        return onnx[0]
    xml = [n for n in names if n.endswith(".xml")]
    if len(xml) != 1:
        raise FailedPrecondition(
            f"version {version} of the openvino_ir model needs one .xml file and its .bin (found: {found})"
        )
    weights = [n for n in names if n.endswith(".bin")]
    same = xml[0].removesuffix(".xml") + ".bin"
    if same not in weights and len(weights) != 1:
        raise FailedPrecondition(
            f"version {version} of the openvino_ir model needs {same} beside {xml[0]} (found: {found})"
        )
    return xml[0]


# -- OVMS's config file --


def config_json(models: Mapping[str, str]) -> str:
    """OVMS's config.json listing `models` (model id → base_path), sorted by id."""
    entries = [{"config": {"name": name, "base_path": base}} for name, base in sorted(models.items())]
    return json.dumps({"model_config_list": entries}, indent=2) + "\n"


# -- OVMS's model status --


class State(StrEnum):
    """OVMS's ModelVersionState (src/modelversionstatus.hpp), as its REST API spells it."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""

    def describe(self) -> str:
        detail = self.error_code
        if self.error_message and self.error_message not in (self.error_code, "OK"):
            detail += f": {self.error_message}"
        return f"version {self.version}: state {self.state}, error_code {detail}"


def version_statuses(body: Any) -> list[VersionStatus]:
    """The versions of one model's status (`{"model_version_status": [...]}`); ill-formed
    entries are skipped, an ill-formed body is no version at all."""
    items = body.get("model_version_status") if isinstance(body, Mapping) else None
    out: list[VersionStatus] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        given = item.get("status")
        status: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        try:
            version = int(item.get("version", 0))
        except (TypeError, ValueError):
            continue
        out.append(
            VersionStatus(
                version=version,
                state=str(item.get("state", "")),
                error_code=str(status.get("error_code", "OK")),
                error_message=str(status.get("error_message", "")),
            )
        )
    return sorted(out, key=lambda v: v.version)


def available_models(body: Any) -> list[str]:
    """The names in a `GET /v1/config` answer that have a version serving (AVAILABLE)."""
    if not isinstance(body, Mapping):
        return []
    return sorted(
        str(name) for name, status in body.items() if any(v.state == State.AVAILABLE for v in version_statuses(status))
    )


class Outcome(StrEnum):
    LOADED = "loaded"
    LOADING = "loading"
    FAILED = "failed"


@dataclass(frozen=True)
class LoadOutcome:
    outcome: Outcome
    message: str = ""  # for FAILED: what OVMS said, for the user


def load_outcome(
    statuses: Sequence[VersionStatus], *, version: int, model_format: str, reload_error: str = ""
) -> LoadOutcome:
    """Whether OVMS serves `version` of a model, from its version statuses after a reload.

    `reload_error`: the reload's own answer when it was an error (OVMS answers one error for
    the whole file, so it may concern another model; it is quoted only when this one failed).
    """
    said = f"; OVMS answered the reload: {reload_error}" if reload_error else ""
    if not statuses:
        return LoadOutcome(
            Outcome.FAILED,
            f"OVMS found no version of the {model_format} model (no numeric version folder it could use){said}",
        )
    chosen = next((s for s in statuses if s.version == version), statuses[-1])
    if chosen.state == State.AVAILABLE:
        return LoadOutcome(Outcome.LOADED)
    if chosen.state in (State.START, State.LOADING) and chosen.error_code == "OK":
        return LoadOutcome(Outcome.LOADING)
    # LOADING with an error code is OVMS's "failed loading"; END / UNLOADING: it gave up on it
    return LoadOutcome(Outcome.FAILED, f"OVMS could not load the {model_format} model ({chosen.describe()}){said}")
