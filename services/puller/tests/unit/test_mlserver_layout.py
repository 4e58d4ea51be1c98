"""model-settings.json for MLServer: upstream's MLServer adapter's layout cases, on names only."""

from __future__ import annotations

import pytest

from meshserve.common.errors import FailedPrecondition
from meshserve.puller.mlserver_layout import IMPLEMENTATIONS, model_files, model_settings

FOLDER = "/models/m1"


def settings(model_type: str, files: list[str], user: dict | None = None) -> dict:  # type: ignore[type-arg]
    return model_settings(model_id="m1", model_type=model_type, folder=FOLDER, files=files, user=user)


@pytest.mark.parametrize("fmt", sorted(IMPLEMENTATIONS))
def test_a_single_file_is_the_uri_whatever_its_name(fmt: str) -> None:
    assert settings(fmt, ["mushroom.weird-name"]) == {
        "name": "m1",
        "implementation": IMPLEMENTATIONS[fmt],
        "parameters": {"uri": f"{FOLDER}/mushroom.weird-name"},
    }


def test_a_single_file_in_a_subfolder_is_the_uri() -> None:
    assert settings("sklearn", ["somedir/somefile"])["parameters"]["uri"] == f"{FOLDER}/somedir/somefile"


def test_a_well_known_name_wins_among_several_files() -> None:
    assert settings("xgboost", ["README.txt", "model.json", "train.csv"])["parameters"]["uri"] == f"{FOLDER}/model.json"
    assert settings("xgboost", ["model.json", "model.bst"])["parameters"]["uri"] == f"{FOLDER}/model.bst"


def test_several_files_without_a_well_known_name_give_the_folder() -> None:
    assert settings("sklearn", ["data", "metadata/x"])["parameters"]["uri"] == FOLDER


def test_the_pullers_bookkeeping_and_partial_downloads_are_not_model_files() -> None:
    assert model_files([".meshserve-files.json", "model.bst.part", "model.bst", "model-settings.json", ".x/y"]) == ["model.bst"]
    assert settings("lightgbm", [".meshserve-files.json", "model.bst"])["parameters"]["uri"] == f"{FOLDER}/model.bst"


def test_no_model_file_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="no model file"):
        settings("sklearn", [".meshserve-files.json"])


def test_an_unknown_format_without_settings_names_the_built_in_ones() -> None:
    with pytest.raises(FailedPrecondition) as err:
        settings("pmml", ["model.pmml"])
    assert "'pmml'" in err.value.message and "lightgbm, sklearn, xgboost" in err.value.message
    assert "model-settings.json" in err.value.message


def test_the_users_settings_are_kept_with_name_and_uri_rewritten() -> None:
    user = {
        "name": "mushroom-xgboost",
        "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./mushroom-xgboost.json", "version": "v0.1.0", "extra": {"k": 1}},
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 784]}],
        "max_batch_size": 4,
    }
    out = settings("xgboost", ["mushroom-xgboost.json", "model-settings.json"], user)
    assert out == {
        **user,
        "name": "m1",
        "parameters": {"uri": f"{FOLDER}/mushroom-xgboost.json", "version": "v0.1.0", "extra": {"k": 1}},
    }
    assert user["name"] == "mushroom-xgboost" and user["parameters"]["uri"] == "./mushroom-xgboost.json"  # not mutated


def test_a_custom_implementation_is_kept_for_any_format_name() -> None:
    out = settings("my-format", ["weights.bin"], {"implementation": "my_pkg.runtime.MyModel"})
    assert out == {"name": "m1", "implementation": "my_pkg.runtime.MyModel"}


def test_settings_without_implementation_get_the_formats() -> None:
    assert settings("sklearn", ["model.joblib"], {"name": "x"}) == {"name": "m1", "implementation": IMPLEMENTATIONS["sklearn"]}


def test_settings_without_implementation_for_an_unknown_format_are_refused() -> None:
    with pytest.raises(FailedPrecondition, match="names no `implementation`"):
        settings("mllib", ["data/x"], {})


@pytest.mark.parametrize("uri", ["../other-model/model.bst", "/etc/passwd", "./a/../../x"])
def test_a_uri_outside_the_folder_is_refused(uri: str) -> None:
    with pytest.raises(FailedPrecondition, match="outside the model's folder"):
        settings("xgboost", ["model.bst"], {"parameters": {"uri": uri}})


def test_an_absolute_uri_inside_the_folder_is_kept() -> None:
    assert settings("xgboost", ["model.bst"], {"parameters": {"uri": f"{FOLDER}/./model.bst"}})["parameters"]["uri"] == f"{FOLDER}/model.bst"


@pytest.mark.parametrize("bad", [[], "x", 3, None])
def test_settings_that_are_not_an_object_or_bad_parameters_are_refused(bad: object) -> None:
    with pytest.raises(FailedPrecondition):
        settings("xgboost", ["model.bst"], {"parameters": bad} if bad is not None else [])  # type: ignore[arg-type]


@pytest.mark.parametrize("uri", ["", 5])
def test_a_uri_that_is_not_a_string_is_refused(uri: object) -> None:
    with pytest.raises(FailedPrecondition, match="non-empty string"):
        settings("xgboost", ["model.bst"], {"parameters": {"uri": uri}})
