"""Model-server adapters: how the puller asks a model server to load and unload.

`ModelServerAdapter` is the interface; `MLServerAdapter` implements it over MLServer's
v2 repository REST API. Triton and OVMS adapters will implement the same interface.
"""

from __future__ import annotations

import asyncio
import json
import logging
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
