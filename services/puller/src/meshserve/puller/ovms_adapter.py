"""OpenVINO Model Server as the pod's model server, driven through its config file.

OVMS has no per-model load API. As upstream's ModelMesh OVMS adapter does, the puller owns
the file OVMS reads (`--config_path`; OVMS runs with `--file_system_poll_wait_seconds=0`):
a load lays the downloaded folder out as an OVMS base_path (ovms_layout), adds the model to
the list, rewrites the whole file and calls `POST /v1/config/reload`; OVMS applies the file
during that call, and the adapter reads the model's version status. An unload removes the
entry and reloads. Served models are those with a version AVAILABLE in `GET /v1/config`.

Invariants:
- One lock serialises "change the list, write the file, reload, read the status", so
  concurrent loads never interleave their files and every reload sees a whole file (it is
  written to a temporary file in the same folder, then renamed over the old one).
- The file is written on the event loop (a few hundred bytes), not in a worker thread: a
  thread cannot be cancelled, and a write finishing after its cancelled load released the
  lock could overwrite a newer list.
- OVMS answers a reload for the whole file: one bad model makes it answer an error though
  the others loaded. A load's outcome is therefore read from the model's own version status
  (ovms_layout.load_outcome), never from the reload's HTTP code alone.
- A model whose load failed is taken out of the file again at once (a failed entry would
  make every later reload answer an error).

Errors: a format OVMS does not serve, a folder without the files OVMS needs, or OVMS not
loading the model (its state, error code and reload error text) → FailedPrecondition;
OVMS unreachable or the file not writable → Unavailable; the load deadline (waiting for the
lock included) → DeadlineExceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import httpx

from meshserve.common.backoff import backoff_delay
from meshserve.common.errors import DeadlineExceeded, FailedPrecondition, MeshError, Unavailable
from meshserve.puller import ovms_layout
from meshserve.puller.adapter import apply_moves, folder_files

log = logging.getLogger(__name__)

RELOAD = "/v1/config/reload"


class OVMSAdapter:
    server = "OVMS"

    def __init__(self, *, rest_url: str, config_path: Path, unload_timeout: float = 90.0) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.config_path = config_path
        self.unload_timeout = unload_timeout
        self._client = httpx.AsyncClient(base_url=self.rest_url, timeout=30)
        self._lock = asyncio.Lock()
        self._models: dict[str, str] = {}  # model id -> base_path: what the file lists

    async def close(self) -> None:
        await self._client.aclose()

    async def ready(self) -> bool:
        """OVMS answers `/v2/health/ready`. Also writes an empty config file when there is
        none (OVMS does not start without one)."""
        if not self.config_path.exists():
            with contextlib.suppress(MeshError):
                self._write_config()
        try:
            return (await self._client.get("/v2/health/ready", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    async def load(self, *, model_id: str, model_type: str, folder: Path, timeout: float) -> None:  # noqa: ASYNC109 - the load deadline, forwarded to OVMS
        fmt = ovms_layout.model_format(model_type)
        plan = await asyncio.to_thread(lay_out_ovms_model, folder, model_type=fmt)
        base_path = str(await asyncio.to_thread(folder.resolve))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout), self._lock:
                self._models[model_id] = base_path
                try:
                    await self._load_locked(model_id, plan=plan, fmt=fmt, deadline=deadline)
                except MeshError:
                    self._models.pop(model_id, None)
                    await self._apply_quietly()
                    raise
        except TimeoutError as err:
            raise DeadlineExceeded(f"OVMS did not load {model_id} within {timeout:.0f}s") from err

    async def _load_locked(self, model_id: str, *, plan: ovms_layout.Layout, fmt: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        self._write_config()
        status, body = await self._reload(timeout=max(deadline - loop.time(), 0.1))
        reload_error = "" if status in (200, 201) else f"HTTP {status}: {_error_text(body)}"
        attempt = 0
        while True:
            if status in (200, 201) and isinstance(body, dict) and model_id in body:
                statuses = ovms_layout.version_statuses(body[model_id])  # the reload's answer has them all
            else:
                statuses = await self._model_status(model_id, reload_error=reload_error)
            result = ovms_layout.load_outcome(statuses, version=plan.version, model_format=fmt, reload_error=reload_error)
            if result.outcome == ovms_layout.Outcome.LOADED:
                log.info("OVMS serves %s (version %d, %s)", model_id, plan.version, plan.model_file)
                return
            if result.outcome == ovms_layout.Outcome.FAILED:
                raise FailedPrecondition(result.message)
            # still loading: OVMS answered before the load finished (it loads during the
            # reload, so this is rare); poll its status until the load deadline
            delay = backoff_delay(attempt=attempt, rand=random.random(), base=0.1, cap=1.0)
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
            attempt += 1
            status, body = 0, None

    async def _get_model(self, model_id: str) -> httpx.Response:
        try:
            return await self._client.get(f"/v1/models/{model_id}")
        except httpx.HTTPError as err:
            raise Unavailable(f"OVMS is not reachable at {self.rest_url}: {type(err).__name__}") from err

    async def _model_status(self, model_id: str, *, reload_error: str) -> list[ovms_layout.VersionStatus]:
        response = await self._get_model(model_id)
        if response.status_code == 404:
            said = f"; OVMS answered the reload: {reload_error}" if reload_error else ""
            raise FailedPrecondition(f"OVMS did not take the model into its configuration ({_error_text(_json(response))}){said}")
        if response.status_code != 200:
            raise Unavailable(f"OVMS's model status answered HTTP {response.status_code}: {_error_text(_json(response))}")
        return ovms_layout.version_statuses(_json(response))

    async def unload(self, *, model_id: str) -> None:
        async with self._lock:
            self._models.pop(model_id, None)
            self._write_config()
            status, body = await self._reload(timeout=self.unload_timeout)
            if status in (200, 201) and isinstance(body, dict):
                still = model_id in ovms_layout.available_models(body)
            else:  # the reload answered an error, maybe for another model: ask about this one
                response = await self._get_model(model_id)
                still = response.status_code == 200 and any(
                    v.state == ovms_layout.State.AVAILABLE for v in ovms_layout.version_statuses(_json(response))
                )
            if still:
                raise Unavailable(f"OVMS still serves {model_id} after the reload (HTTP {status}: {_error_text(body)})")

    async def loaded_models(self) -> list[str]:
        try:
            response = await self._client.get("/v1/config")
        except httpx.HTTPError:
            return []
        if response.status_code != 200:
            return []
        return ovms_layout.available_models(_json(response))

    async def _reload(self, *, timeout: float) -> tuple[int, Any]:  # noqa: ASYNC109 - forwarded to OVMS
        try:
            response = await self._client.post(RELOAD, timeout=timeout)
        except httpx.TimeoutException as err:
            raise DeadlineExceeded(f"OVMS did not finish its config reload within {timeout:.0f}s") from err
        except httpx.HTTPError as err:
            raise Unavailable(f"OVMS is not reachable at {self.rest_url}: {type(err).__name__}") from err
        return response.status_code, _json(response)

    async def _apply_quietly(self) -> None:
        """After a failed load: the file without the model, reloaded (best effort: the
        service's cleanup unloads it again if this does not get through)."""
        try:
            self._write_config()
            await self._reload(timeout=self.unload_timeout)
        except MeshError as err:
            log.warning("could not take a failed model out of OVMS's config: %s", err.message)

    def _write_config(self) -> None:
        """The whole list, atomically: a temporary file in the same folder, renamed over."""
        text = ovms_layout.config_json(self._models)
        folder = self.config_path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.config_path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                os.chmod(tmp, 0o644)  # mkstemp makes it 0600; OVMS may run as another user
                os.replace(tmp, self.config_path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as err:
            raise Unavailable(f"cannot write OVMS's config file {self.config_path}: {err}") from err


def lay_out_ovms_model(folder: Path, *, model_type: str) -> ovms_layout.Layout:
    """Apply ovms_layout's plan to the downloaded folder (blocking)."""
    plan = ovms_layout.layout(model_type=model_type, files=folder_files(folder))
    try:
        apply_moves(folder, plan.moves)
    except OSError as err:
        raise FailedPrecondition(f"could not lay the model folder out for OVMS: {err}") from err
    return plan


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"error": f"HTTP {response.status_code}: {response.text[:300]}"}


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return "no error text"
