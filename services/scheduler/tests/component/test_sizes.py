"""A model's size as its copies measure it (real Redis + Postgres, stand-in pullers on real
sockets): a second copy loaded into a warm model server can measure a few pages (memory an
unloaded model freed is reused); that says nothing of the model and must not become its
size, while a later credible measurement does replace the first one (which counted the
runtime's imports)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from meshserve.scheduler.service import ModelSpec, SchedulerService

from .standin_pullers import pod_fields, stand_in_puller

DISK = 430_000          # the files' bytes, as the puller reports them
FIRST = 4_800_000       # first copy on a fresh model server: the model and the runtime's imports
NOISE = 4096            # a warm server reusing freed memory
LATER = 450_000         # a warm server that had to grow


@pytest.fixture(autouse=True)
async def _forget_models(service: SchedulerService, prefix: str) -> AsyncIterator[None]:
    yield
    for model_id in await service.registry.all_model_ids():
        if model_id.startswith(prefix):
            await service.registry.delete_model(model_id)


async def test_a_tiny_measurement_of_a_later_copy_does_not_become_the_models_size(service: SchedulerService, prefix: str) -> None:
    model, runtime = f"{prefix}-m", f"{prefix}-rt"
    await service.register_model(ModelSpec(model_id=model, model_type="sklearn", storage_uri="s3://b/m.joblib"))

    async def load_on(pod_id: str, measured: int) -> int:
        """A copy on a new pod whose puller measures `measured`; the bytes it settled at."""
        async with stand_in_puller(size=measured, disk=DISK) as puller:
            await service.pods.report_pod(pod_fields(pod_id, runtime=runtime, management_address=puller.address), [])
            record = await service.registry.get_model(model)
            assert await service.loader.place_and_load(record, exclusive=False, deadline=time.monotonic() + 30)
            assert puller.loads == [model]
            return (await service.live.pod_allocations(pod_id))[model]

    assert await load_on(f"{prefix}-a", FIRST) == FIRST
    assert (await service.registry.get_model(model)).measured_size == FIRST
    # the warm server's few pages: the copy keeps what it was reserved with, the model its size
    assert await load_on(f"{prefix}-b", NOISE) == FIRST
    assert (await service.registry.get_model(model)).measured_size == FIRST
    placed = await service.registry.list_events(model_id=model, pod_id=f"{prefix}-b", kinds=["placed"])
    assert placed[0].details["rejected_measurement"] == NOISE and not placed[0].details["measured"]
    # a credible measurement is the newest size
    assert await load_on(f"{prefix}-c", LATER) == LATER
    assert (await service.registry.get_model(model)).measured_size == LATER
