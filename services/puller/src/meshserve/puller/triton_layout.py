"""A Triton model repository entry for one model folder (pure: names and text, no I/O).

The rules of upstream's Triton adapter, on the files the puller downloaded into
`<repository>/<model id>/`:

- Files not already in a numeric version folder move into `1/`; a single model file of
  the format gets the name Triton's backend looks for (`model.onnx`, ...).
- A `config.pbtxt` that came with the model is the user's and is kept: only `name`
  becomes the model id. It must parse as Triton's `ModelConfig`.
- Without one, a config is written: the model id and the native platform; Triton fills in
  inputs and outputs from the model file.
- Where the Triton installation has no native backend for the format (the PyPI
  `nvidia-pytriton` build ships only the python backend), the same files are served by
  meshserve's python-backend model (`triton_python/model.py`), which runs the format's own
  framework and exposes the inputs and outputs the native backend would. Its config is the
  user's or a new one with `backend: "python"` and two parameters naming the framework and
  the file.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from meshserve.common.errors import FailedPrecondition
from meshserve.puller.model_files import model_files

CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True)
class Format:
    backend: str  # the native backend's folder name under Triton's backends
    platform: str  # ModelConfig.platform for the native backend
    filename: str  # the default model file name the native backend looks for
    extensions: tuple[str, ...]
    python_framework: str | None  # what triton_python/model.py runs it with, if it can


FORMATS = {
    "onnx": Format("onnxruntime", "onnxruntime_onnx", "model.onnx", (".onnx",), "onnx"),
}


@dataclass(frozen=True)
class Layout:
    moves: list[tuple[str, str]] = field(default_factory=list)  # (from, to), relative to the model folder
    config: str = ""  # config.pbtxt text
    python_model_in: list[str] = field(default_factory=list)  # version folders that get model.py
    native: bool = True


def _is_version(part: str) -> bool:
    return part.isdigit() and int(part) > 0


def supported_formats() -> list[str]:
    return sorted(FORMATS)


def layout(
    *, model_id: str, model_type: str, files: Sequence[str], native_backends: Collection[str]
    , user_config: str | None = None
) -> Layout:
    """`files`: relative paths of every file in the folder; `user_config`: the text of a
    top-level config.pbtxt that came with the model, if any."""
    fmt = FORMATS.get(model_type)
    if fmt is None:
        raise FailedPrecondition(
            f"the Triton runtime does not serve format {model_type!r} here (served: {', '.join(supported_formats())})"
        )
    native = fmt.backend in native_backends
    if not native and fmt.python_framework is None:
        raise FailedPrecondition(
            f"this Triton installation has no {fmt.backend} backend and meshserve cannot serve {model_type!r} "
            "through the python backend"
        )
    config = model_config_pb2.ModelConfig()
    if user_config is not None:
        try:
            text_format.Parse(user_config, config)
        except text_format.ParseError as err:
            raise FailedPrecondition(f"the model's {CONFIG_FILE} does not parse: {err}") from err
    config.name = model_id

    visible = model_files(files, config_file=CONFIG_FILE)
    moves: list[tuple[str, str]] = []
    for name in visible:
        if not _is_version(name.split("/", 1)[0]):
            moves.append((name, posixpath.join("1", name)))
    placed = sorted({dst for _, dst in moves} | {n for n in visible if _is_version(n.split("/", 1)[0])})
    versions = sorted({p.split("/", 1)[0] for p in placed}, key=int)
    if not versions:
        raise FailedPrecondition("the model folder holds no model file")

    # one model file of the format per version, named as the backend expects
    model_file: dict[str, str] = {}
    for version in versions:
        candidates = [p for p in placed if p.startswith(version + "/") and p.endswith(fmt.extensions)]
        wanted = posixpath.join(version, config.default_model_filename or fmt.filename)
        if wanted in placed:
            model_file[version] = wanted
        elif len(candidates) == 1:
            if candidates[0] in {dst for _, dst in moves}:  # moving anyway: move it to its final name
                moves = [(src, wanted if dst == candidates[0] else dst) for src, dst in moves]
            else:  # already in its version folder, under another name
                moves.append((candidates[0], wanted))
            model_file[version] = wanted
        else:
            found = ", ".join(candidates) or "none"
            raise FailedPrecondition(
                f"version {version} of the model needs one {'/'.join(fmt.extensions)} file or a file named "
                f"{posixpath.basename(wanted)} (found: {found})"
            )
    moves = [(src, dst) for src, dst in moves if src != dst]

    if native:
        if user_config is None or not (config.platform or config.backend):
            config.platform = fmt.platform
        return Layout(moves=moves, config=text_format.MessageToString(config), native=True)

    config.platform = ""
    config.backend = "python"
    assert fmt.python_framework is not None
    config.parameters["meshserve_framework"].string_value = fmt.python_framework
    config.parameters["meshserve_model_file"].string_value = posixpath.basename(model_file[versions[-1]])
    return Layout(
        moves=moves, config=text_format.MessageToString(config), python_model_in=versions, native=False
    )
