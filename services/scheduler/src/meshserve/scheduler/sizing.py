"""How big a model is taken to be, and what a runtime looks like, from what the registry
and the pods report. Pure functions over records: no I/O (`loading.py` and `pods.py` read
the records and apply the results)."""

from __future__ import annotations

from collections.abc import Sequence

from meshserve.common.labels import runtime_spec_from_labels
from meshserve.scheduler.models import ModelRecord, PodInfo, RuntimeRecord

DEFAULT_MODEL_SIZE = 1_000_000
"""Bytes assumed for a model nothing is known about when no pod says otherwise
(ModelMesh's `DEFAULT_MODELSIZE`)."""


MIN_CREDIBLE_MEASUREMENT = 16 * 1024
"""Bytes below which a measured memory growth says nothing about the model (a page or a few of
allocator noise), whatever the model's files are."""


def credible_measurement(measured: int, *, disk_bytes: int) -> bool:
    """Whether a copy's measured memory growth can be taken as the model's size.

    A model server that is already warm can load a model into memory an earlier, unloaded
    model freed (the allocator reuses it without asking the system for more), so the growth
    seen from outside can be a few pages for a model of megabytes (seen: 4,096 bytes). A
    loaded model takes at least about half of its files in memory (formats that map their
    files lazily can take less until used: taking their reservation instead errs on the safe
    side), so a growth below half the files' bytes, or below `MIN_CREDIBLE_MEASUREMENT`, is
    not a measurement of the model: the copy keeps the size it was reserved with and the
    registry keeps the size it knew. Above the floor the newest measurement wins: the first
    copy on a fresh model server also counts the runtime's imports, later ones do not."""
    return measured >= max(MIN_CREDIBLE_MEASUREMENT, disk_bytes // 2)


def known_size(record: ModelRecord) -> int:
    """The best size the registry knows: measured, else declared, else predicted (0: none)."""
    return record.measured_size or record.declared_size or record.predicted_size


def runtime_default_size(pods: Sequence[PodInfo]) -> int:
    """The default model size of the runtimes of `pods` (each pod reports its runtime's
    declared default, `MESHSERVE_PULLER_DEFAULT_MODEL_SIZE_BYTES`). When several runtimes
    could take the model, the largest: a reservation too big is settled down to the real
    size after the load, one too small could over-commit the pod until then."""
    return max((p.default_size for p in pods), default=DEFAULT_MODEL_SIZE)


def describe_runtimes(pods: Sequence[PodInfo]) -> dict[str, RuntimeRecord]:
    """Name -> the runtime as its pods report it (pods without a runtime name are left out).

    The pods of one runtime normally agree; during a rollout the largest values and the
    union of the labels are kept."""
    groups: dict[str, list[PodInfo]] = {}
    for pod in pods:
        if pod.runtime:
            groups.setdefault(pod.runtime, []).append(pod)
    out = {}
    for name, group in groups.items():
        labels = sorted(frozenset().union(*(p.labels for p in group)))
        out[name] = RuntimeRecord(
            name=name,
            spec=runtime_spec_from_labels(labels),
            labels=tuple(labels),
            default_model_size=runtime_default_size(group),
            pod_capacity_bytes=max(p.capacity for p in group),
            max_loading_concurrency=max(p.max_loading for p in group),
            pods=len(group),
        )
    return out
