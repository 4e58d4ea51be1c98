"""The puller's use cases: load (fetch + model server load + measure), unload, sizes.

Downloads on one pod run up to `max_loading_concurrency` at once (the runtime's
maxLoadingConcurrency); the model server's loads run one at a time whenever its memory is
measured, so its memory before and after a load differ only by that load, which is the
size reported to the scheduler (`measured=True`; two loads at once would each be charged
for both). When the memory
cannot be read, the size is the files' bytes x `model_size_multiplier`
(`measured=False`), unless the model server reported its own size (the runtime SPI's
loadModel / modelSize), which is then used instead.

With `storage_helper_disabled` (a ServingRuntime's `storageHelper.disabled`) nothing is
downloaded: the model server gets the storage path and key as registered and fetches the
files itself; only an adapter that takes the whole load request (`ModelRuntimeSpi`) can.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import shutil
import time
from dataclasses import dataclass
from typing import Any

from meshserve.common.errors import InvalidArgument, MeshError, Unavailable
from meshserve.common.storage import check_model_id, safe_join
from meshserve.puller import storage
from meshserve.puller.adapter import ModelRuntimeSpi, ModelServerAdapter
from meshserve.puller.memory import MemoryProbe
from meshserve.puller.model_cache import ModelCache
from meshserve.puller.settings import PullerSettings

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model_id: str
    size_bytes: int
    disk_bytes: int
    measured: bool
    loaded_at: float


@dataclass(frozen=True)
class LoadResult:
    size_bytes: int
    disk_bytes: int
    measured: bool


def _spi_key(model_key: str, *, disk_bytes: int) -> str:
    from meshserve.puller.spi_adapter import forwarded_model_key

    return forwarded_model_key(model_key, disk_bytes=disk_bytes)


class PullerService:
    def __init__(self, *, settings: PullerSettings, adapter: ModelServerAdapter, memory: MemoryProbe) -> None:
        self.settings = settings
        self.adapter = adapter
        self.memory = memory
        self.loaded: dict[str, LoadedModel] = {}
        self._slots = asyncio.Semaphore(max(1, settings.max_loading_concurrency))
        self._measuring = asyncio.Lock()  # loads on a measured pod run one at a time (see the docstring)
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        settings.model_dir.mkdir(parents=True, exist_ok=True)
        self.cache = (
            ModelCache(root=settings.cache_dir, max_bytes=settings.cache_max_bytes, verify=settings.cache_verify)
            if settings.cache_dir is not None
            else None
        )

    def set_max_loading_concurrency(self, n: int) -> None:
        """A new limit (the runtime's own, read at startup): only before loads start."""
        self._slots = asyncio.Semaphore(max(1, n))

    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._model_locks.setdefault(model_id, asyncio.Lock())

    @staticmethod
    def parse_key(model_key: str) -> dict[str, Any]:
        if not model_key:
            return {}
        try:
            key = json.loads(model_key)
        except ValueError as err:
            raise InvalidArgument("model_key is not valid JSON") from err
        if not isinstance(key, dict):
            raise InvalidArgument("model_key must be a JSON object")
        return key

    def _storage(self, key: dict[str, Any]) -> storage.StorageConfig:
        params = {str(k): v for k, v in (key.get("storage_params") or {}).items()}
        cfg = storage.load_storage_config(self.settings.storage_config_dir, key.get("storage_key"), params)
        if cfg.type == "s3" and not cfg.fields.get("endpoint_url") and self.settings.s3_endpoint:
            cfg.fields["endpoint_url"] = self.settings.s3_endpoint
        return cfg

    async def load(self, *, model_id: str, model_type: str, model_path: str, model_key: str) -> LoadResult:
        check_model_id(model_id)
        key = self.parse_key(model_key)
        if not model_type:
            model_type = str((key.get("model_type") or {}).get("name", ""))
        async with self._lock(model_id):
            if model_id in self.loaded:
                m = self.loaded[model_id]
                return LoadResult(m.size_bytes, m.disk_bytes, m.measured)
            folder = safe_join(self.settings.model_dir, model_id)
            spi = self.adapter if isinstance(self.adapter, ModelRuntimeSpi) else None
            if self.settings.storage_helper_disabled:
                if spi is None:
                    raise InvalidArgument("storage_helper_disabled needs a model server that fetches its own files (kind spi)")
                disk = 0
            else:
                cfg = self._storage(key)
                try:
                    disk = await asyncio.to_thread(
                        storage.fetch, cfg, path=model_path, dest=folder, pvc_mounts=self.settings.pvc_mounts_dir,
                        cache=self.cache,
                    )
                except BaseException as err:
                    await asyncio.to_thread(self._remove_files, model_id)   # nothing half-written stays
                    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                        # this pod's disk, not the model: the scheduler tries another pod
                        raise Unavailable(
                            f"no space left in this pod's model directory ({self.settings.model_dir}) for "
                            f"{model_id!r}: free space there or give the pod a larger volume"
                        ) from err
                    raise
            reported = 0
            async with self._slots, self._measuring if self.memory.available else contextlib.nullcontext():
                before = await self.memory.snapshot()
                started = time.monotonic()
                try:
                    if spi is not None:
                        local = not self.settings.storage_helper_disabled
                        reported = await spi.load_model(
                            model_id=model_id,
                            model_type=model_type,
                            model_path=str(folder) if local else model_path,
                            model_key=_spi_key(model_key, disk_bytes=disk) if local else model_key,
                            timeout=self.settings.load_timeout_seconds,
                        )
                    else:
                        await self.adapter.load(
                            model_id=model_id,
                            model_type=model_type,
                            folder=folder,
                            timeout=self.settings.load_timeout_seconds,
                        )
                except asyncio.CancelledError:
                    # the scheduler gave up (deadline): undo in the background
                    task = asyncio.create_task(self._cleanup(model_id))
                    self._cleanups.add(task)
                    task.add_done_callback(self._cleanups.discard)
                    raise
                except MeshError:
                    await self._cleanup(model_id)
                    raise
                after = await self.memory.snapshot()
            predicted = int(disk * self.settings.model_size_multiplier) or self.settings.default_model_size_bytes
            grown = self.memory.growth(before, after)
            measured = grown is not None and grown > 0
            size = grown if measured and grown is not None else reported or predicted
            self.loaded[model_id] = LoadedModel(model_id, size, disk, measured, time.time())
            log.info(
                "loaded %s in %.2fs: %d bytes on disk, %d bytes %s",
                model_id,
                time.monotonic() - started,
                disk,
                size,
                "measured" if measured else "reported by the model server" if reported else "predicted",
            )
            return LoadResult(size, disk, measured)

    async def _cleanup(self, model_id: str) -> None:
        try:
            await self.adapter.unload(model_id=model_id)
        except MeshError as err:
            log.warning("cleanup unload of %s failed: %s", model_id, err.message)
        await asyncio.to_thread(self._remove_files, model_id)

    def _remove_files(self, model_id: str) -> None:
        try:
            folder = safe_join(self.settings.model_dir, model_id)
        except InvalidArgument:
            return
        shutil.rmtree(folder, ignore_errors=True)

    async def unload(self, model_id: str) -> None:
        check_model_id(model_id)
        async with self._lock(model_id):
            await self.adapter.unload(model_id=model_id)
            self.loaded.pop(model_id, None)
            await asyncio.to_thread(self._remove_files, model_id)
        self._model_locks.pop(model_id, None)

    async def predict_size(self, *, model_path: str, model_key: str, model_id: str = "") -> int:
        key = self.parse_key(model_key)
        if self.settings.storage_helper_disabled and isinstance(self.adapter, ModelRuntimeSpi):
            # the puller does not read the storage: the runtime's own guess (0 if it has none)
            model_type = str((key.get("model_type") or {}).get("name", ""))
            return await self.adapter.predict_model_size(
                model_id=model_id, model_type=model_type, model_path=model_path, model_key=model_key
            )
        cfg = self._storage(key)
        disk = await asyncio.to_thread(storage.predict_size, cfg, path=model_path, pvc_mounts=self.settings.pvc_mounts_dir)
        return int(disk * self.settings.model_size_multiplier) if disk else 0

    async def sync_with_model_server(self) -> bool:
        """False when the model server is not ready. Forget models it no longer holds
        (it restarted), so heartbeats never report copies that cannot serve."""
        if not await self.adapter.ready():
            return False
        asked_at = time.time()
        held = set(await self.adapter.loaded_models())
        stale = [
            m
            for m, info in self.loaded.items()
            if m not in held and info.loaded_at < asked_at and not self._lock(m).locked()
        ]
        for model_id in stale:
            log.warning("model server no longer holds %s; forgetting it", model_id)
            self.loaded.pop(model_id, None)
        return True

    async def purge(self) -> None:
        """Unload whatever the model server holds (a fresh puller owns nothing yet)."""
        for name in await self.adapter.loaded_models():
            try:
                await self.adapter.unload(model_id=name)
            except MeshError as err:
                log.warning("purge of %s failed: %s", name, err.message)
        for child in self.settings.model_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
