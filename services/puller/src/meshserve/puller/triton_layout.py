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
from meshserve.puller.model_files import is_version, model_files

CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True)
class Format:
    backend: str  # the native backend's folder name under Triton's backends
    platform: str  # ModelConfig.platform for the native backend ("": the config names the backend)
    filename: str  # the model file (or folder) name the native backend looks for
    extensions: tuple[str, ...] = ()  # a single model file of the format
    python_framework: str | None = None  # what triton_python/model.py runs it with, if it can
    marker: str = ""  # a folder format: the file that marks the model's folder
    companions: tuple[str, ...] = ()  # files beside the model file that take its stem (model.bin)


SAVEDMODEL = "model.savedmodel"
KERAS_EXTENSIONS = (".h5", ".hdf5", ".keras")

FORMATS = {
    "onnx": Format("onnxruntime", "onnxruntime_onnx", "model.onnx", (".onnx",), "onnx"),
    "pytorch": Format("pytorch", "pytorch_libtorch", "model.pt", (".pt", ".pth"), "pytorch"),
    "tensorflow": Format("tensorflow", "tensorflow_savedmodel", SAVEDMODEL, (), "tensorflow", marker="saved_model.pb"),
    # a Keras file is converted to a SavedModel first (upstream's adapter does the same)
    "keras": Format("tensorflow", "tensorflow_savedmodel", SAVEDMODEL, (), "tensorflow", marker="saved_model.pb"),
    "openvino_ir": Format("openvino", "", "model.xml", (".xml",), "openvino", companions=(".bin",)),
    # tree models on Triton's FIL backend (upstream's example-triton-xgboost-isvc); the user's
    # config.pbtxt says `model_type` (xgboost_json, lightgbm, ...), as FIL needs
    "xgboost": Format("fil", "", "xgboost.json", (".json",), "fil"),
    "lightgbm": Format("fil", "", "model.txt", (".txt",), "fil"),
}


@dataclass(frozen=True)
class Layout:
    moves: list[tuple[str, str]] = field(default_factory=list)  # (from, to), relative to the model folder
    config: str = ""  # config.pbtxt text
    python_model_in: list[str] = field(default_factory=list)  # version folders that get model.py
    native: bool = True


def supported_formats() -> list[str]:
    return sorted(FORMATS)


def _format(model_type: str) -> Format:
    fmt = FORMATS.get(model_type)
    if fmt is None:
        raise FailedPrecondition(
            f"the Triton runtime does not serve format {model_type!r} here (served: {', '.join(supported_formats())})"
        )
    return fmt


def keras_to_convert(files: Sequence[str]) -> str | None:
    """The Keras file of a `keras` model that still needs converting to a SavedModel: None
    when the folder already holds a SavedModel (a reload, or a user who converted it)."""
    visible = model_files(files, config_file=CONFIG_FILE)
    if any(posixpath.basename(n) == FORMATS["keras"].marker for n in visible):
        return None
    found = [n for n in visible if n.lower().endswith(KERAS_EXTENSIONS)]
    if len(found) != 1:
        raise FailedPrecondition(
            f"a keras model needs one {'/'.join(KERAS_EXTENSIONS)} file or a SavedModel folder (found: {', '.join(found) or 'none'})"
        )
    return found[0]


def keras_savedmodel_path(source: str) -> str:
    """Where the SavedModel converted from `source` goes: `<version>/model.savedmodel`."""
    top = source.split("/", 1)[0]
    return posixpath.join(top if is_version(top) and "/" in source else "1", SAVEDMODEL)


def _place_folder_model(fmt: Format, version: str, names: list[str], where: dict[str, str], wanted: str) -> None:
    """A folder format (SavedModel): the folder holding the marker file becomes `wanted`."""
    def rel(n: str) -> str:
        return where[n][len(version) + 1 :]

    markers = [n for n in names if posixpath.basename(rel(n)) == fmt.marker]
    if any(rel(n) == posixpath.join(wanted, fmt.marker) for n in markers):
        return
    if len(markers) != 1:
        found = ", ".join(where[n] for n in markers) or "none"
        raise FailedPrecondition(
            f"version {version} of the model needs one SavedModel folder (a {fmt.marker} with its variables/; found: {found})"
        )
    folder = posixpath.dirname(rel(markers[0]))
    for n in names:
        r = rel(n)
        if folder == "":
            where[n] = posixpath.join(version, wanted, r)
        elif r.startswith(folder + "/"):
            where[n] = posixpath.join(version, wanted, r[len(folder) + 1 :])


def _place_file_model(fmt: Format, version: str, names: list[str], where: dict[str, str], wanted: str) -> None:
    """A single-file format: the one file of the format takes the name the backend expects
    (and its companions the same stem)."""
    target = posixpath.join(version, wanted)
    current = {where[n]: n for n in names}
    if target not in current:
        candidates = [n for n in names if where[n].endswith(fmt.extensions)]
        if len(candidates) != 1:
            found = ", ".join(where[n] for n in candidates) or "none"
            raise FailedPrecondition(
                f"version {version} of the model needs one {'/'.join(fmt.extensions)} file or a file named "
                f"{posixpath.basename(wanted)} (found: {found})"
            )
        source = where[candidates[0]]
        where[candidates[0]] = target
        for ext in fmt.companions:
            companion = posixpath.splitext(source)[0] + ext
            if companion in current:
                where[current[companion]] = posixpath.splitext(target)[0] + ext
    placed = set(where[n] for n in names)
    for ext in fmt.companions:
        if posixpath.splitext(target)[0] + ext not in placed:
            raise FailedPrecondition(
                f"version {version} of the model has {posixpath.basename(target)} but no "
                f"{posixpath.basename(posixpath.splitext(target)[0] + ext)} beside it"
            )


def layout(
    *, model_id: str, model_type: str, files: Sequence[str], native_backends: Collection[str]
    , user_config: str | None = None
) -> Layout:
    """`files`: relative paths of every file in the folder; `user_config`: the text of a
    top-level config.pbtxt that came with the model, if any."""
    fmt = _format(model_type)
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
    # files not in a version folder go to version 1
    where = {n: n if is_version(n.split("/", 1)[0]) and "/" in n else posixpath.join("1", n) for n in visible}
    versions = sorted({p.split("/", 1)[0] for p in where.values()}, key=int)
    if not versions:
        raise FailedPrecondition("the model folder holds no model file")

    wanted = config.default_model_filename or fmt.filename
    for version in versions:
        names = [n for n in visible if where[n].startswith(version + "/")]
        place = _place_folder_model if fmt.marker else _place_file_model
        place(fmt, version, names, where, wanted)
    moves = [(src, dst) for src, dst in where.items() if src != dst]

    if native:
        if user_config is None or not (config.platform or config.backend):
            if fmt.platform:
                config.platform = fmt.platform
            else:
                config.backend = fmt.backend
        return Layout(moves=moves, config=text_format.MessageToString(config), native=True)

    config.platform = ""
    config.backend = "python"
    assert fmt.python_framework is not None
    config.parameters["meshserve_framework"].string_value = fmt.python_framework
    config.parameters["meshserve_model_file"].string_value = wanted
    return Layout(
        moves=moves, config=text_format.MessageToString(config), python_model_in=versions, native=False
    )


WARM_MODEL = "_meshserve-warm-frameworks"
"""The repository entry of a pod's warm-up model (not a model anyone registered)."""


def warm_frameworks(formats: Collection[str], *, native_backends: Collection[str]) -> tuple[list[str], list[str]]:
    """The python-backend frameworks that serving `formats` here needs, and the format names
    this runtime does not know. A format with a native backend needs none (its backend is
    part of the server process)."""
    frameworks, unknown = set(), []
    for name in formats:
        fmt = FORMATS.get(name)
        if fmt is None:
            unknown.append(name)
        elif fmt.backend not in native_backends and fmt.python_framework is not None:
            frameworks.add(fmt.python_framework)
    return sorted(frameworks), unknown


def warm_config(frameworks: Sequence[str]) -> str:
    """config.pbtxt of the warm-up model: meshserve's python model with `meshserve_warm`,
    one placeholder input and output (it serves nothing)."""
    config = model_config_pb2.ModelConfig(name=WARM_MODEL, backend="python")
    config.parameters["meshserve_warm"].string_value = ",".join(frameworks)
    for tensors, name in ((config.input, "WARM_IN"), (config.output, "WARM_OUT")):
        tensor = tensors.add()
        tensor.name, tensor.data_type = name, model_config_pb2.TYPE_FP32
        tensor.dims.append(1)
    return str(text_format.MessageToString(config))
