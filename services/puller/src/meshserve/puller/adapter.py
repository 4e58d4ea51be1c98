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
from pathlib import Path
from typing import Any, Protocol

import httpx

from meshserve.common.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from meshserve.puller import mlserver_layout

log = logging.getLogger(__name__)



class ModelServerAdapter(Protocol):
    async def ready(self) -> bool: ...
    async def load(self, *, model_id: str, model_type: str, folder: Path, timeout: float) -> None: ...  # noqa: ASYNC109
    async def unload(self, *, model_id: str) -> None: ...
    async def loaded_models(self) -> list[str]: ...
    async def close(self) -> None: ...


class MLServerAdapter:
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

    async def load(self, *, model_id: str, model_type: str, folder: Path, timeout: float) -> None:  # noqa: ASYNC109 - forwarded to MLServer
        settings = await asyncio.to_thread(write_model_settings, folder, model_id=model_id, model_type=model_type)
        try:
            response = await self._client.post(f"/v2/repository/models/{model_id}/load", timeout=timeout)
        except httpx.TimeoutException as err:
            raise DeadlineExceeded(f"MLServer did not load {model_id} within {timeout:.0f}s") from err
        except httpx.HTTPError as err:
            raise Unavailable(f"MLServer is not reachable at {self.rest_url}: {type(err).__name__}") from err
        if response.status_code != 200:
            uri = str((settings.get("parameters") or {}).get("uri") or "")
            what = uri.rsplit("/", 1)[-1] if "/" in uri else uri
            raise FailedPrecondition(
                f"MLServer ({settings.get('implementation')}) could not load {what or 'the model folder'}: "
                f"{_error_text(response)}"
            )

    async def unload(self, *, model_id: str) -> None:
        try:
            response = await self._client.post(f"/v2/repository/models/{model_id}/unload")
        except httpx.HTTPError as err:
            raise Unavailable(f"MLServer is not reachable at {self.rest_url}: {type(err).__name__}") from err
        if response.status_code not in (200, 404):
            raise Unavailable(f"MLServer could not unload {model_id}: {_error_text(response)}")

    async def loaded_models(self) -> list[str]:
        try:
            response = await self._client.post("/v2/repository/index", json={})
        except httpx.HTTPError:
            return []
        if response.status_code != 200:
            return []
        return [m["name"] for m in response.json() if m.get("state") == "READY"]


USER_SETTINGS_COPY = ".user-model-settings.json"


def write_model_settings(folder: Path, *, model_id: str, model_type: str) -> dict[str, Any]:
    """MLServer's model-settings.json, merged into the user's when the model brought one
    (rules in mlserver_layout). The user's file is kept aside as it came, so a reload of
    the same folder merges from the original, not from our rewrite."""
    path = folder / mlserver_layout.SETTINGS_FILE
    kept = folder / USER_SETTINGS_COPY
    user = None
    if path.is_file() and not kept.is_file():
        path.replace(kept)
    if kept.is_file():
        try:
            user = json.loads(kept.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise FailedPrecondition(f"the model's {mlserver_layout.SETTINGS_FILE} is not valid JSON: {err}") from err
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    settings = mlserver_layout.model_settings(
        model_id=model_id, model_type=model_type, folder=str(folder.resolve()), files=files, user=user
    )
    path.write_text(json.dumps(settings))
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


class TritonAdapter:
    """Triton Inference Server in explicit model-control mode, over its repository REST API.

    The puller's model folder is Triton's model repository: `<model dir>/<model id>/` is laid
    out as a repository entry (triton_layout) and loaded with `POST
    /v2/repository/models/<id>/load`. `backends_dir` is the server's backend folder; the
    native backends found there are used, the python backend otherwise."""

    def __init__(self, *, rest_url: str, backends_dir: Path | None = None) -> None:
        self.rest_url = rest_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.rest_url, timeout=30)
        self.native_backends = (
            {p.name for p in backends_dir.iterdir() if p.is_dir() and p.name != "python"}
            if backends_dir is not None and backends_dir.is_dir()
            else set()
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def ready(self) -> bool:
        try:
            return (await self._client.get("/v2/health/ready", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    async def load(self, *, model_id: str, model_type: str, folder: Path, timeout: float) -> None:  # noqa: ASYNC109 - forwarded to Triton
        await asyncio.to_thread(lay_out_triton_model, folder, model_id=model_id, model_type=model_type,
                                native_backends=self.native_backends)
        try:
            response = await self._client.post(f"/v2/repository/models/{model_id}/load", timeout=timeout)
        except httpx.TimeoutException as err:
            raise DeadlineExceeded(f"Triton did not load {model_id} within {timeout:.0f}s") from err
        except httpx.HTTPError as err:
            raise Unavailable(f"Triton is not reachable at {self.rest_url}: {type(err).__name__}") from err
        if response.status_code != 200:
            raise FailedPrecondition(f"Triton could not load the {model_type} model: {_error_text(response)}")

    async def unload(self, *, model_id: str) -> None:
        try:
            response = await self._client.post(f"/v2/repository/models/{model_id}/unload", json={})
        except httpx.HTTPError as err:
            raise Unavailable(f"Triton is not reachable at {self.rest_url}: {type(err).__name__}") from err
        if response.status_code not in (200, 400, 404):  # 400: Triton's answer for a model it does not hold
            raise Unavailable(f"Triton could not unload {model_id}: {_error_text(response)}")

    async def loaded_models(self) -> list[str]:
        try:
            response = await self._client.post("/v2/repository/index", json={"ready": True})
        except httpx.HTTPError:
            return []
        if response.status_code != 200:
            return []
        return sorted({m["name"] for m in response.json() if m.get("state") == "READY"})


def lay_out_triton_model(folder: Path, *, model_id: str, model_type: str, native_backends: set[str]) -> None:
    """Apply triton_layout's plan to the downloaded folder (blocking)."""
    from meshserve.puller import (
        triton_layout,  # imports tritonclient's ModelConfig: only Triton pods pay for it
    )

    config_path = folder / triton_layout.CONFIG_FILE
    kept = folder / ".user-config.pbtxt"
    if config_path.is_file() and not kept.is_file():
        config_path.replace(kept)
    user = kept.read_text(errors="replace") if kept.is_file() else None
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    plan = triton_layout.layout(
        model_id=model_id, model_type=model_type, files=files, native_backends=native_backends, user_config=user
    )
    for src, dst in plan.moves:
        target = folder / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        (folder / src).replace(target)
    for version in plan.python_model_in:
        shutil.copyfile(PYTHON_MODEL, folder / version / "model.py")
    config_path.write_text(plan.config)
