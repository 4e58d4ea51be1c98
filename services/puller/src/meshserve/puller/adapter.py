"""Model-server adapters: how the puller asks a model server to load and unload.

`ModelServerAdapter` is the interface; `MLServerAdapter` implements it over MLServer's
v2 repository REST API. Triton and OVMS adapters will implement the same interface.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Protocol

import httpx

from meshserve.common.errors import DeadlineExceeded, FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

MLSERVER_IMPLEMENTATIONS = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
}


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
        implementation = MLSERVER_IMPLEMENTATIONS.get(model_type)
        if implementation is None:
            raise FailedPrecondition(
                f"MLServer runtime has no implementation for format {model_type!r} "
                f"(supported: {', '.join(sorted(MLSERVER_IMPLEMENTATIONS))})"
            )
        await asyncio.to_thread(write_model_settings, folder, model_id=model_id, implementation=implementation)
        try:
            response = await self._client.post(f"/v2/repository/models/{model_id}/load", timeout=timeout)
        except httpx.TimeoutException as err:
            raise DeadlineExceeded(f"MLServer did not load {model_id} within {timeout:.0f}s") from err
        except httpx.HTTPError as err:
            raise Unavailable(f"MLServer is not reachable at {self.rest_url}: {type(err).__name__}") from err
        if response.status_code != 200:
            raise FailedPrecondition(f"MLServer could not load the model: {_error_text(response)}")

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


def write_model_settings(folder: Path, *, model_id: str, implementation: str) -> None:
    """MLServer's model-settings.json; `uri` is the single model file, else the folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "model-settings")))
    uri = str(files[0]) if len(files) == 1 else str(folder)
    settings = {"name": model_id, "implementation": implementation, "parameters": {"uri": uri}}
    (folder / "model-settings.json").write_text(json.dumps(settings))


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return f"HTTP {response.status_code}: {response.text[:300]}"
