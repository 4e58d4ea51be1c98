"""MLServer's `model-settings.json` for one model folder (pure: no I/O).

The rules of upstream's MLServer adapter, on the files the puller downloaded into
`<model dir>/<model id>/`:

- A `model-settings.json` among them is the user's and is kept: only `name` becomes the
  model id, a relative `parameters.uri` becomes absolute (and may not leave the folder),
  and an `implementation` is added only when the user gave none and the format has one
  built in. So a custom `implementation` in the user's package, and any parameters or
  `inputs` / `outputs`, reach MLServer unchanged.
- Without one, the settings are generated: `implementation` from the format, and
  `parameters.uri` the single model file when there is one, else a well-known file name
  of the format in the folder (`model.json`, `model.bst`, ...), else the folder (MLServer's
  runtimes then look for their own well-known names in it).
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from meshserve.common.errors import FailedPrecondition
from meshserve.puller.model_files import model_files as files_of_model

SETTINGS_FILE = "model-settings.json"

IMPLEMENTATIONS = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
}

# the names MLServer's runtimes look for in a folder, in their order
WELL_KNOWN_FILES = {
    "sklearn": ("model.joblib", "model.pickle", "model.pkl"),
    "xgboost": ("model.bst", "model.json", "model.ubj"),
    "lightgbm": ("model.bst",),
}


def model_files(names: Sequence[str]) -> list[str]:
    """The model's own files among `names` (relative POSIX paths)."""
    return files_of_model(names, config_file=SETTINGS_FILE)


def model_settings(
    *, model_id: str, model_type: str, folder: str, files: Sequence[str], user: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The settings to write as `<folder>/model-settings.json`.

    `folder` is the model's absolute folder, `files` the relative paths of every file in it,
    `user` the parsed `model-settings.json` that came with the model (None if there was none).
    """
    if user is not None:
        return _merged(model_id=model_id, model_type=model_type, folder=folder, user=user)
    implementation = IMPLEMENTATIONS.get(model_type)
    if implementation is None:
        raise FailedPrecondition(
            f"the MLServer runtime has no built-in implementation for format {model_type!r} "
            f"(built in: {', '.join(sorted(IMPLEMENTATIONS))}); ship a model-settings.json "
            "naming your own `implementation` with the model"
        )
    own = model_files(files)
    if not own:
        raise FailedPrecondition("the model folder holds no model file")
    if len(own) == 1:
        uri = posixpath.join(folder, own[0])
    else:
        known = [name for name in WELL_KNOWN_FILES.get(model_type, ()) if name in own]
        uri = posixpath.join(folder, known[0]) if known else folder
    return {"name": model_id, "implementation": implementation, "parameters": {"uri": uri}}


def _merged(*, model_id: str, model_type: str, folder: str, user: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(user, Mapping):
        raise FailedPrecondition(f"{SETTINGS_FILE} must hold a JSON object")
    settings: dict[str, Any] = copy.deepcopy(dict(user))
    settings["name"] = model_id
    if not settings.get("implementation"):
        implementation = IMPLEMENTATIONS.get(model_type)
        if implementation is None:
            raise FailedPrecondition(
                f"{SETTINGS_FILE} names no `implementation` and format {model_type!r} has none built in "
                f"(built in: {', '.join(sorted(IMPLEMENTATIONS))})"
            )
        settings["implementation"] = implementation
    parameters = settings.get("parameters")
    if parameters is None:
        return settings
    if not isinstance(parameters, Mapping):
        raise FailedPrecondition(f"`parameters` in {SETTINGS_FILE} must be a JSON object")
    uri = parameters.get("uri")
    if uri is not None:
        if not isinstance(uri, str) or not uri:
            raise FailedPrecondition(f"`parameters.uri` in {SETTINGS_FILE} must be a non-empty string")
        settings["parameters"] = {**parameters, "uri": _inside(folder, uri)}
    return settings


def _inside(folder: str, uri: str) -> str:
    """`uri` made absolute under `folder`; it may not point outside it."""
    path = posixpath.normpath(uri if posixpath.isabs(uri) else posixpath.join(folder, uri))
    root = posixpath.normpath(folder)
    if path != root and not path.startswith(root + "/"):
        raise FailedPrecondition(
            f"`parameters.uri` {uri!r} in {SETTINGS_FILE} points outside the model's folder; "
            "use a path relative to the folder"
        )
    return path
