"""PVC storage: files under `<pvc_mounts>/<claim>/<path>` are symlinked into the model
folder, never copied, never written through, and nothing may lead outside the claim."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from meshserve.common.errors import FailedPrecondition, InvalidArgument
from meshserve.common.storage import parse_storage_uri
from meshserve.puller import adapter, storage


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)


@pytest.fixture
def mounts(tmp_path: Path) -> Path:
    mounts = tmp_path / "pvc_mounts"
    _tree(
        mounts / "models-pvc-1",
        {
            "sklearn/mnist-svm.joblib": b"j" * 1234,
            "tf/config.pbtxt": b'name: "tf"',
            "tf/1/model.savedmodel/saved_model.pb": b"pb" * 50,
            "tf/1/model.savedmodel/variables/variables.index": b"ix",
            "mlserver/model-settings.json": json.dumps({"implementation": "mlserver_sklearn.SKLearnModel"}).encode(),
            "mlserver/model.joblib": b"m" * 10,
        },
    )
    (mounts / "models-pvc-1" / "tf" / "1" / "model.savedmodel" / "assets").mkdir()
    _tree(tmp_path / "outside", {"secret.txt": b"not yours", "dir/also.txt": b"no"})
    return mounts


def _fetch(uri: str, mounts: Path, dest: Path) -> int:
    location = parse_storage_uri(uri)
    cfg = storage.StorageConfig(location.type, {"type": location.type, **location.params})
    return storage.fetch(cfg, path=location.path, dest=dest, pvc_mounts=mounts)


def test_a_single_file_becomes_one_symlink(mounts: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "m1"
    assert _fetch("pvc://models-pvc-1/sklearn/mnist-svm.joblib", mounts, dest) == 1234
    link = dest / "mnist-svm.joblib"
    assert link.is_symlink() and link.resolve() == (mounts / "models-pvc-1/sklearn/mnist-svm.joblib").resolve()
    assert os.path.isabs(os.readlink(link))  # still right after a layout moves it
    assert sorted(p.name for p in dest.iterdir()) == ["mnist-svm.joblib"]
    # a reload of the same folder replaces the link in place
    assert _fetch("pvc://models-pvc-1/sklearn/mnist-svm.joblib", mounts, dest) == 1234
    shutil.rmtree(dest)  # what unload does: the claim keeps its file
    assert (mounts / "models-pvc-1/sklearn/mnist-svm.joblib").read_bytes() == b"j" * 1234


def test_a_folder_keeps_its_tree_of_real_folders_and_linked_files(mounts: Path, tmp_path: Path) -> None:
    dest = tmp_path / "m2"
    assert _fetch("pvc://models-pvc-1/tf", mounts, dest) == 10 + 100 + 2
    assert sorted(adapter.folder_files(dest)) == [
        "1/model.savedmodel/saved_model.pb", "1/model.savedmodel/variables/variables.index", "config.pbtxt",
    ]
    assert (dest / "1" / "model.savedmodel" / "assets").is_dir()  # an empty folder of the model is kept
    assert not (dest / "1").is_symlink() and (dest / "1" / "model.savedmodel" / "saved_model.pb").is_symlink()


def test_type_pvc_keys_and_the_size_prediction(mounts: Path, tmp_path: Path) -> None:
    config_dir = tmp_path / "storage-config"
    config_dir.mkdir()
    (config_dir / "pvc1").write_text(json.dumps({"type": "pvc", "name": "models-pvc-1"}))
    cfg = storage.load_storage_config(config_dir, "pvc1", {})
    assert storage.fetch(cfg, path="tf", dest=tmp_path / "m3", pvc_mounts=mounts) == 112
    assert storage.predict_size(cfg, path="tf", pvc_mounts=mounts) == 112
    assert storage.predict_size(cfg, path="nothing", pvc_mounts=mounts) == 0


def test_layouts_move_links_and_never_write_into_the_claim(mounts: Path, tmp_path: Path) -> None:
    claim = mounts / "models-pvc-1"
    original = (claim / "mlserver/model-settings.json").read_bytes()
    dest = tmp_path / "mlserver-model"
    _fetch("pvc://models-pvc-1/mlserver", mounts, dest)
    settings = adapter.write_model_settings(dest, model_id="m4", model_type="sklearn")
    assert (claim / "mlserver/model-settings.json").read_bytes() == original  # rewritten beside, not through
    assert not (dest / "model-settings.json").is_symlink()
    assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"
    adapter.apply_moves(dest, [("model.joblib", "1/model.joblib")])  # as the version layouts do
    assert (dest / "1" / "model.joblib").read_bytes() == b"m" * 10
    assert (claim / "mlserver/model.joblib").exists()


def test_symlinks_inside_the_claim_are_followed_while_they_stay_inside(mounts: Path, tmp_path: Path) -> None:
    claim = mounts / "models-pvc-1"
    (claim / "latest").symlink_to("sklearn")  # a relative link to a folder of the same claim
    dest = tmp_path / "m5"
    assert _fetch("pvc://models-pvc-1/latest", mounts, dest) == 1234
    assert (dest / "mnist-svm.joblib").resolve() == (claim / "sklearn/mnist-svm.joblib").resolve()


@pytest.mark.parametrize(
    ("make", "path", "error", "match"),
    [
        (None, "../outside/secret.txt", InvalidArgument, "may not contain '..'"),
        (None, "sklearn/../../models-pvc-2/x", InvalidArgument, "may not contain '..'"),
        (None, "/etc/passwd", InvalidArgument, "must be relative to the claim"),
        ("file-link", "escape.txt", InvalidArgument, "leaves PVC 'models-pvc-1'"),
        ("dir-link", "escape", InvalidArgument, "leaves PVC 'models-pvc-1'"),
        ("inner-link", "sklearn", InvalidArgument, r"sklearn/leak.txt is a symlink that leaves the PVC"),
        ("inner-dir-link", "sklearn", InvalidArgument, r"sklearn/leakdir is a symlink that leaves the PVC"),
        ("loop", "sklearn", InvalidArgument, "a loop"),
        (None, "no/such/model", FailedPrecondition, "no file or folder at pvc://models-pvc-1/no/such/model"),
    ],
)
def test_paths_that_escape_the_claim_are_refused_before_any_link(
    mounts: Path, tmp_path: Path, make: str | None, path: str, error: type[Exception], match: str
) -> None:
    claim, outside = mounts / "models-pvc-1", tmp_path / "outside"
    if make == "file-link":
        (claim / "escape.txt").symlink_to(outside / "secret.txt")
    elif make == "dir-link":
        (claim / "escape").symlink_to(outside / "dir")
    elif make == "inner-link":
        (claim / "sklearn" / "leak.txt").symlink_to(outside / "secret.txt")
    elif make == "inner-dir-link":
        (claim / "sklearn" / "leakdir").symlink_to(outside / "dir")
    elif make == "loop":
        (claim / "sklearn" / "again").symlink_to(claim / "sklearn")
    cfg = storage.StorageConfig("pvc", {"type": "pvc", "name": "models-pvc-1"})
    dest = tmp_path / "refused"
    with pytest.raises(error, match=match):
        storage.fetch(cfg, path=path, dest=dest, pvc_mounts=mounts)
    assert not dest.exists()


def test_the_claim_must_be_named_and_mounted(mounts: Path, tmp_path: Path) -> None:
    dest = tmp_path / "refused"
    with pytest.raises(FailedPrecondition, match="needs the field 'name'"):
        storage.fetch(storage.StorageConfig("pvc", {"type": "pvc"}), path="sklearn", dest=dest, pvc_mounts=mounts)
    with pytest.raises(FailedPrecondition, match="PVC 'models-pvc-4' is not mounted"):
        _fetch("pvc://models-pvc-4/sklearn/mnist-svm.joblib", mounts, dest)
    for name in ("..", "a/b"):
        with pytest.raises(InvalidArgument, match="is not a claim name"):
            storage.fetch(storage.StorageConfig("pvc", {"type": "pvc", "name": name}), path="x", dest=dest, pvc_mounts=mounts)
    assert not dest.exists()
