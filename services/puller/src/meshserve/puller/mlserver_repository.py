"""An MLServer model repository that maps a model id straight to its folder.

MLServer's stock repository globs every `model-settings.json` under the root on each
load, so a load gets slower with every model on the pod. The puller writes
`<root>/<model id>/model-settings.json`; this class reads exactly that file.
Configure MLServer with `model_repository_implementation =
"meshserve.puller.mlserver_repository.FlatModelRepository"` and
`model_repository_implementation_args = {"models_dir": <the puller's model dir>}`.

Runs inside the MLServer process: imports MLServer, nothing of meshserve's protobufs.
"""

from __future__ import annotations

import os

from mlserver.errors import ModelNotFound
from mlserver.repository import ModelRepository
from mlserver.repository.load import load_model_settings
from mlserver.settings import ModelSettings

SETTINGS_FILE = "model-settings.json"


WARM_IMPORTS = "mlserver_sklearn,mlserver_xgboost,mlserver_lightgbm"


def _warm_runtime_imports() -> None:
    """Import the model runtimes now, at server start.

    Otherwise the first load of a format pays for importing its runtime and library
    (`make bench-sizes`: the first xgboost model measured ~70 MiB instead of ~3 MiB), and
    the puller's before/after memory delta would charge that to the first model, where it
    stays after that model is unloaded. MLServer imports this module while parsing its
    settings, in the process that loads the models (parallel_workers: 0), before serving.

    `MESHSERVE_WARM_IMPORTS` (comma-separated modules, default `WARM_IMPORTS`; empty:
    none) replaces the list, e.g. to add `sklearn.ensemble` where forests are common.
    A runtime that is not installed is skipped; one that is installed but fails to
    import only warns: neither stops MLServer (the load of that format fails later with
    the reason).
    """
    import importlib
    import warnings

    for name in filter(None, (n.strip() for n in os.environ.get("MESHSERVE_WARM_IMPORTS", WARM_IMPORTS).split(","))):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(err.name + ".")):  # a dependency is missing
                warnings.warn(f"meshserve: could not import {name} at start-up: {err}", stacklevel=1)
        except Exception as err:  # a broken install must not stop the server
            warnings.warn(f"meshserve: could not import {name} at start-up: {type(err).__name__}: {err}", stacklevel=1)


_warm_runtime_imports()


def _install_error_reasons() -> None:
    """Answer a failed load (or any unexpected error) with the model server's own reason.

    MLServer's REST app maps only its own `MLServerError` to `{"error": ...}`; anything a
    runtime raises while loading (xgboost's `XGBoostError` for a truncated file, a pickle of
    the wrong class, ...) becomes a bare `500 Internal Server Error`, which tells a user
    nothing. The app takes its handlers from `mlserver.rest.errors._EXCEPTION_HANDLERS`
    when it is built, after this module is imported, so one entry added there is enough.
    """
    try:
        from fastapi import Request
        from fastapi.responses import JSONResponse
        from mlserver.rest import errors
    except ImportError:  # another MLServer layout: keep its behaviour
        return

    async def reason(_: Request, exc: Exception) -> JSONResponse:
        kind = type(exc)
        name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
        text = str(exc).strip() or "no message"
        return JSONResponse(status_code=500, content={"error": f"{name}: {text}"[:2000]})

    errors._EXCEPTION_HANDLERS.setdefault(Exception, reason)  # type: ignore[arg-type]


_install_error_reasons()


class FlatModelRepository(ModelRepository):
    def __init__(self, root: str, models_dir: str | None = None, **_: object) -> None:
        # `mlserver start <folder>` forces the repository root to <folder>; the puller's
        # model folder is passed separately through model_repository_implementation_args
        self._root = os.path.abspath(models_dir or root)

    def _path(self, name: str) -> str | None:
        if not name or "/" in name or name.startswith("."):
            return None
        path = os.path.join(self._root, name, SETTINGS_FILE)
        return path if os.path.isfile(path) else None

    async def list(self) -> list[ModelSettings]:
        out = []
        try:
            names = sorted(os.listdir(self._root))
        except OSError:
            return []
        for name in names:
            path = self._path(name)
            if path is not None:
                try:
                    out.append(load_model_settings(path))
                except Exception:
                    continue
        return out

    async def find(self, name: str) -> list[ModelSettings]:
        path = self._path(name)
        if path is None:
            raise ModelNotFound(name)
        return [load_model_settings(path)]
