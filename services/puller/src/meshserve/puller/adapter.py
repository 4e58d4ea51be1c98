"""Model-server adapters: how the puller asks a model server to load and unload.

`ModelServerAdapter` is the interface; `MLServerAdapter` implements it over MLServer's
v2 repository REST API, `TritonAdapter` over Triton's. An OVMS adapter will implement the
same interface.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from meshserve.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from meshserve.puller import mlserver_layout
from meshserve.puller.keras_converter import KerasConverter

log = logging.getLogger(__name__)



class ModelServerAdapter(Protocol):
    async def ready(self) -> bool: ...
    async def load(self, *, model_id: str, model_type: str, folder: Path, timeout: float) -> None: ...  # noqa: ASYNC109
    async def unload(self, *, model_id: str) -> None: ...
    async def loaded_models(self) -> list[str]: ...
    async def close(self) -> None: ...


@runtime_checkable
class ModelRuntimeSpi(Protocol):
    """An adapter that takes ModelMesh's whole load request and answers the model server's
    own size of the loaded model (spi_adapter.SpiAdapter); 0 means it reported none.
    Optional beside ModelServerAdapter: PullerService uses it when the adapter has it."""

    async def load_model(
        self, *, model_id: str, model_type: str, model_path: str, model_key: str, timeout: float  # noqa: ASYNC109
    ) -> int: ...
    async def predict_model_size(self, *, model_id: str, model_type: str, model_path: str, model_key: str) -> int: ...



class _V2Repository:
    """What MLServer and Triton share: the KServe v2 health and model-repository REST API
    (`/v2/health/ready`, `/v2/repository/models/<id>/load|unload`, `/v2/repository/index`)."""

    server = "the model server"
    unload_body: dict[str, Any] | None = None
    unload_ok: tuple[int, ...] = (200, 404)
    index_body: dict[str, Any] = {}

    def __init__(self, *, rest_url: str) -> None:
        self.rest_url = rest_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.rest_url, timeout=30)

    async def close(self) -> None:
        await self._client.aclose()

    async def ready(self) -> bool:
        try:
            return (await self._client.get("/v2/health/ready", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    async def _post_load(self, model_id: str, timeout: float) -> httpx.Response:  # noqa: ASYNC109 - forwarded to the server
        try:
            return await self._client.post(f"/v2/repository/models/{model_id}/load", timeout=timeout)
        except httpx.TimeoutException as err:
            raise DeadlineExceeded(f"{self.server} did not load {model_id} within {timeout:.0f}s") from err
        except httpx.HTTPError as err:
            raise Unavailable(f"{self.server} is not reachable at {self.rest_url}: {type(err).__name__}") from err

    async def unload(self, *, model_id: str) -> None:
        try:
            response = await self._client.post(f"/v2/repository/models/{model_id}/unload", json=self.unload_body)
        except httpx.HTTPError as err:
            raise Unavailable(f"{self.server} is not reachable at {self.rest_url}: {type(err).__name__}") from err
        if response.status_code not in self.unload_ok:
            raise Unavailable(f"{self.server} could not unload {model_id}: {_error_text(response)}")

    async def loaded_models(self) -> list[str]:
        try:
            response = await self._client.post("/v2/repository/index", json=self.index_body)
        except httpx.HTTPError:
            return []
        if response.status_code != 200:
            return []
        return sorted({m["name"] for m in response.json() if m.get("state") == "READY"})


class MLServerAdapter(_V2Repository):
    server = "MLServer"

    async def load(self, *, model_id: str, model_type: str, folder: Path, timeout: float) -> None:  # noqa: ASYNC109 - forwarded to MLServer
        settings = await asyncio.to_thread(write_model_settings, folder, model_id=model_id, model_type=model_type)
        response = await self._post_load(model_id, timeout)
        if response.status_code != 200:
            uri = str((settings.get("parameters") or {}).get("uri") or "")
            what = uri.rsplit("/", 1)[-1] if "/" in uri else uri
            raise FailedPrecondition(
                f"MLServer ({settings.get('implementation')}) could not load {what or 'the model folder'}: "
                f"{_error_text(response)}"
            )


USER_SETTINGS_COPY = ".user-model-settings.json"
USER_CONFIG_COPY = ".user-config.pbtxt"


def _users_original(folder: Path, name: str, kept_as: str) -> Path | None:
    """The file `name` that came with the model, moved aside to `kept_as` the first time, so
    a reload of the same folder starts from the user's original, not from our rewrite."""
    path, kept = folder / name, folder / kept_as
    if path.is_file() and not kept.is_file():
        path.replace(kept)
    return kept if kept.is_file() else None


def folder_files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def apply_moves(folder: Path, moves: list[tuple[str, str]]) -> None:
    """A layout's (from, to) moves, relative to `folder` (blocking; OSError as it comes)."""
    for src, dst in moves:
        target = folder / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        (folder / src).replace(target)


def write_model_settings(folder: Path, *, model_id: str, model_type: str) -> dict[str, Any]:
    """MLServer's model-settings.json, merged into the user's when the model brought one
    (rules in mlserver_layout)."""
    kept = _users_original(folder, mlserver_layout.SETTINGS_FILE, USER_SETTINGS_COPY)
    user = None
    if kept is not None:
        try:
            user = json.loads(kept.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise FailedPrecondition(f"the model's {mlserver_layout.SETTINGS_FILE} is not valid JSON: {err}") from err
    settings = mlserver_layout.model_settings(
        model_id=model_id, model_type=model_type, folder=str(folder.resolve()), files=folder_files(folder), user=user
    )
    (folder / mlserver_layout.SETTINGS_FILE).write_text(json.dumps(settings))
    return settings


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return f"HTTP {response.status_code}: {response.text[:300]}"


PYTHON_MODEL = Path(__file__).parent / "triton_python" / "model.py"
KERAS_ORIGINAL = ".meshserve-keras"  # the converted Keras file is kept here, out of Triton's sight


class TritonAdapter(_V2Repository):
    """Triton Inference Server in explicit model-control mode, over its repository REST API.

    The puller's model folder is Triton's model repository: `<model dir>/<model id>/` is laid
    out as a repository entry (triton_layout) and loaded with `POST
    /v2/repository/models/<id>/load`. `backends_dir` is the server's backend folder; the
    native backends found there are used, the python backend otherwise."""

    server = "Triton"
    unload_body: dict[str, Any] | None = {}
    unload_ok = (200, 400, 404)  # 400: Triton's answer for a model it does not hold
    index_body = {"ready": True}

    def __init__(self, *, rest_url: str, backends_dir: Path | None = None, keras_python: str = sys.executable) -> None:
        super().__init__(rest_url=rest_url)
        self.keras = KerasConverter(python=keras_python)  # an interpreter with tensorflow, for Keras files
        self.native_backends = (
            {p.name for p in backends_dir.iterdir() if p.is_dir() and p.name != "python"}
            if backends_dir is not None and backends_dir.is_dir()
            else set()
        )

    async def load(self, *, model_id: str, model_type: str, folder: Path, timeout: float) -> None:  # noqa: ASYNC109 - forwarded to Triton
        from meshserve.puller.triton_layout import WARM_MODEL

        if model_id == WARM_MODEL:
            raise InvalidArgument(f"model id {WARM_MODEL!r} is reserved for the Triton pod's warm-up model")
        if model_type == "keras":
            await convert_keras(folder, converter=self.keras, timeout=timeout)
        await asyncio.to_thread(lay_out_triton_model, folder, model_id=model_id, model_type=model_type,
                                native_backends=self.native_backends)
        response = await self._post_load(model_id, timeout)
        if response.status_code != 200:
            raise FailedPrecondition(f"Triton could not load the {model_type} model: {_error_text(response)}")

    async def loaded_models(self) -> list[str]:
        from meshserve.puller.triton_layout import WARM_MODEL

        return [m for m in await super().loaded_models() if m != WARM_MODEL]

    async def prestart_frameworks(self, formats: list[str], *, repository: Path, timeout: float) -> list[str]:  # noqa: ASYNC109 - forwarded to Triton
        """Load the warm-up model that imports the frameworks `formats` need here (pod start,
        before any load is measured); answers the frameworks it warmed. A failure is logged:
        the pod serves without it, its first model of a format is charged the framework."""
        from meshserve.puller import triton_layout

        frameworks, unknown = triton_layout.warm_frameworks(formats, native_backends=self.native_backends)
        if unknown:
            log.warning("prestart: Triton does not serve format(s) %s here; ignored", ", ".join(unknown))
        if not frameworks:
            return []
        folder = repository / triton_layout.WARM_MODEL / "1"
        await asyncio.to_thread(_write_warm_model, folder, triton_layout.warm_config(frameworks))
        started = time.monotonic()
        try:
            response = await self._post_load(triton_layout.WARM_MODEL, timeout)
        except (DeadlineExceeded, Unavailable) as err:
            log.warning("prestart of %s failed: %s", ", ".join(frameworks), err.message)
            return []
        if response.status_code != 200:
            log.warning("prestart of %s failed: %s", ", ".join(frameworks), _error_text(response))
            return []
        log.info("prestarted %s in %.1fs", ", ".join(frameworks), time.monotonic() - started)
        return frameworks

    async def close(self) -> None:
        await self.keras.close()
        await super().close()


def _write_warm_model(version_dir: Path, config: str) -> None:
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PYTHON_MODEL, version_dir / "model.py")
    (version_dir.parent / "config.pbtxt").write_text(config)


def lay_out_triton_model(folder: Path, *, model_id: str, model_type: str, native_backends: set[str]) -> None:
    """Apply triton_layout's plan to the downloaded folder (blocking)."""
    from meshserve.puller import (
        triton_layout,  # imports tritonclient's ModelConfig: only Triton pods pay for it
    )

    kept = _users_original(folder, triton_layout.CONFIG_FILE, USER_CONFIG_COPY)
    user = kept.read_text(errors="replace") if kept is not None else None
    plan = triton_layout.layout(
        model_id=model_id, model_type=model_type, files=folder_files(folder), native_backends=native_backends, user_config=user
    )
    apply_moves(folder, plan.moves)
    for version in plan.python_model_in:
        shutil.copyfile(PYTHON_MODEL, folder / version / "model.py")
    (folder / triton_layout.CONFIG_FILE).write_text(plan.config)


async def convert_keras(folder: Path, *, converter: KerasConverter, timeout: float) -> None:  # noqa: ASYNC109 - a budget for the child
    """Convert the model's Keras file to `<version>/model.savedmodel` with the converter (a
    warm tensorflow child process), then put the Keras file aside; a folder converted before
    (a reload) is left as it is."""
    from meshserve.puller import triton_layout

    source = triton_layout.keras_to_convert(folder_files(folder))
    if source is None:
        return
    await converter.convert(folder / source, folder / triton_layout.keras_savedmodel_path(source), timeout=timeout)
    kept = folder / KERAS_ORIGINAL / source
    kept.parent.mkdir(parents=True, exist_ok=True)
    (folder / source).replace(kept)
