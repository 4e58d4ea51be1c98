"""`storage.sync_objects`, the download loop of the object stores, with a download function
of the test's own: parallel downloads, and what a failure leaves behind."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from meshserve.common.errors import InvalidArgument, Unavailable
from meshserve.puller.storage import MANIFEST, RemoteObject, sync_objects


def _objects(*names: str) -> list[RemoteObject]:
    return [RemoteObject(f"m/{name}", len(name), f"v-{name}") for name in names]


def test_downloads_run_at_once_up_to_the_worker_count(tmp_path: Path) -> None:
    # each download waits until four are running: a serial loop would break the barrier
    barrier = threading.Barrier(4, timeout=30)

    def download(obj: RemoteObject, tmp: Path) -> None:
        barrier.wait()
        tmp.write_text(obj.key.removeprefix("m/"))

    objects = _objects("a", "bb", "ccc", "dddd")
    assert sync_objects(objects, path="m", dest=tmp_path, download=download, workers=4) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST, "a", "bb", "ccc", "dddd"])
    assert json.loads((tmp_path / MANIFEST).read_text()) == {n: f"v-{n}" for n in ("a", "bb", "ccc", "dddd")}


def test_a_failed_download_stops_the_rest_and_leaves_only_whole_files(tmp_path: Path) -> None:
    def download(obj: RemoteObject, tmp: Path) -> None:
        tmp.write_text("partial")
        if obj.key == "m/bad":
            raise Unavailable("download of m/bad failed")
        tmp.write_text(obj.key.removeprefix("m/"))

    objects = _objects("a", "bad", "c", "d", "e", "f")
    with pytest.raises(Unavailable, match="m/bad"):
        sync_objects(objects, path="m", dest=tmp_path, download=download, workers=2)
    on_disk = {p.name for p in tmp_path.iterdir()} - {MANIFEST}
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert "bad" not in on_disk and not any(name.endswith(".part") for name in on_disk)
    assert set(manifest) == on_disk  # every whole file is recorded, nothing else
    assert all((tmp_path / name).read_text() == name for name in on_disk)


def test_a_bad_key_refuses_the_fetch_before_any_download(tmp_path: Path) -> None:
    calls: list[str] = []
    objects = [RemoteObject("m/ok", 1, "v"), RemoteObject("m/../../escape", 1, "v")]
    with pytest.raises(InvalidArgument):
        sync_objects(objects, path="m", dest=tmp_path / "d", download=lambda obj, tmp: calls.append(obj.key), workers=8)
    assert calls == [] and not (tmp_path / "d").exists()
