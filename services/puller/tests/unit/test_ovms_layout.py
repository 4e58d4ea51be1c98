"""OVMS model folders, config file and statuses: upstream's OVMS adapter layout cases and
OVMS's status shapes, on names and dicts only."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserve.common.errors import FailedPrecondition
from meshserve.puller.ovms_layout import (
    LoadOutcome,
    Outcome,
    VersionStatus,
    available_models,
    config_json,
    layout,
    load_outcome,
    model_format,
    version_statuses,
)

# -- formats --


@pytest.mark.parametrize(
    ("given_type", "want"),
    [
        pytest.param("openvino_ir", "openvino_ir", id="modelmesh-name"),
        pytest.param("openvino", "openvino_ir", id="upstream-adapter-alias"),
        pytest.param("OpenVINO_IR:opset1", "openvino_ir", id="case-and-version-suffix"),
        pytest.param("onnx", "onnx", id="onnx"),
        pytest.param("onnx:1", "onnx", id="onnx-version"),
    ],
)
def test_model_formats_ovms_serves(given_type: str, want: str) -> None:
    assert model_format(given_type) == want


@pytest.mark.parametrize("given_type", ["sklearn", "tensorflow", "", "openvino-ir"])
def test_other_formats_are_refused_naming_what_ovms_serves(given_type: str) -> None:
    with pytest.raises(FailedPrecondition, match="serves onnx and openvino_ir models"):
        model_format(given_type)


# -- layout: upstream's cases (adaptmodellayout_test.go), in the puller's folder --


def test_ir_files_at_the_top_move_into_version_1() -> None:  # upstream "openvinoSimple"
    plan = layout(model_type="openvino_ir", files=["model.xml", "model.bin"])
    assert sorted(plan.moves) == [("model.bin", "1/model.bin"), ("model.xml", "1/model.xml")]
    assert plan.version == 1 and plan.model_file == "1/model.xml"


def test_ir_version_folders_stay_and_the_highest_is_served() -> None:  # upstream "openvinoNativeLayout"
    files = ["2/model.bin", "2/model.xml", "5/model.bin", "5/model.xml"]
    plan = layout(model_type="openvino_ir", files=files)
    assert plan.moves == [] and plan.version == 5 and plan.model_file == "5/model.xml"


def test_versions_compare_as_numbers_not_text() -> None:
    plan = layout(model_type="onnx", files=["9/model.onnx", "10/model.onnx"])
    assert plan.version == 10


def test_a_single_onnx_file_becomes_1_model_onnx_whatever_its_name() -> None:  # upstream "onnxSimple" / "onnxRename"
    assert layout(model_type="onnx", files=["model.onnx"]).moves == [("model.onnx", "1/model.onnx")]
    plan = layout(model_type="onnx", files=["mymodel.data"])
    assert plan.moves == [("mymodel.data", "1/model.onnx")] and plan.model_file == "1/model.onnx"


def test_onnx_version_folders_inside_a_wrapping_folder_move_up() -> None:  # upstream "onnxNativeLayout"
    plan = layout(model_type="onnx", files=["my_model/2/model.onnx", "my_model/6/model.onnx"])
    assert sorted(plan.moves) == [("my_model/2/model.onnx", "2/model.onnx"), ("my_model/6/model.onnx", "6/model.onnx")]
    assert plan.version == 6 and plan.model_file == "6/model.onnx"


def test_a_wrapping_folder_is_looked_into_at_any_depth() -> None:
    plan = layout(model_type="openvino_ir", files=["a/b/net.xml", "a/b/net.bin"])
    assert sorted(plan.moves) == [("a/b/net.bin", "1/net.bin"), ("a/b/net.xml", "1/net.xml")]
    assert plan.model_file == "1/net.xml"


def test_an_onnx_file_already_in_a_version_folder_keeps_its_name() -> None:
    plan = layout(model_type="onnx", files=["3/net.onnx", "3/labels.txt"])
    assert plan.moves == [] and plan.model_file == "3/net.onnx"


def test_other_files_move_along_with_the_model() -> None:  # e.g. OVMS's mapping_config.json
    plan = layout(model_type="onnx", files=["mnist.onnx", "mapping_config.json"])
    assert sorted(plan.moves) == [("mapping_config.json", "1/mapping_config.json"), ("mnist.onnx", "1/mnist.onnx")]
    assert plan.model_file == "1/mnist.onnx"


def test_files_beside_version_folders_stay_where_they_are() -> None:
    plan = layout(model_type="openvino_ir", files=["1/model.xml", "1/model.bin", "README.md"])
    assert plan.moves == [] and plan.version == 1


def test_the_pullers_bookkeeping_and_partial_downloads_are_not_the_model() -> None:
    plan = layout(model_type="onnx", files=[".meshserve-files.json", "model.onnx", "other.onnx.part"])
    assert plan.moves == [("model.onnx", "1/model.onnx")]


def test_a_bin_of_another_name_is_fine_when_it_is_the_only_one() -> None:  # OVMS takes the first .bin
    plan = layout(model_type="openvino_ir", files=["1/net.xml", "1/weights.bin"])
    assert plan.model_file == "1/net.xml"


def test_the_layout_of_a_laid_out_folder_changes_nothing() -> None:
    first = layout(model_type="onnx", files=["mnist.onnx"])
    again = layout(model_type="onnx", files=[dst for _, dst in first.moves])
    assert again.moves == [] and again.model_file == first.model_file


@pytest.mark.parametrize(
    ("model_type", "files", "match"),
    [
        pytest.param("openvino_ir", ["model.xml"], r"needs model\.bin beside model\.xml \(found: model\.xml\)", id="ir-without-bin"),
        pytest.param("openvino_ir", ["model.bin"], r"needs one \.xml file and its \.bin \(found: model\.bin\)", id="ir-without-xml"),
        pytest.param("openvino_ir", ["a.xml", "a.bin", "b.xml", "b.bin"], r"needs one \.xml file", id="two-ir-models"),
        pytest.param("openvino_ir", ["1/net.xml", "1/a.bin", "1/b.bin"], r"needs net\.bin beside net\.xml", id="ambiguous-bin"),
        pytest.param("onnx", ["a.onnx", "b.onnx"], r"needs one \.onnx file \(found: a\.onnx, b\.onnx\)", id="two-onnx"),
        pytest.param("onnx", ["labels.txt", "notes.md"], r"needs one \.onnx file", id="no-onnx"),
        pytest.param("onnx", [".meshserve-files.json"], "holds no model file", id="only-bookkeeping"),
        pytest.param("onnx", [], "holds no model file", id="empty"),
        pytest.param("onnx", ["0/model.onnx"], "from 1: the folder 0/ is not a version", id="version-0"),
        pytest.param("openvino_ir", ["1/sub/model.xml", "1/sub/model.bin"], r"version 1 .* \(found: none\)", id="too-deep"),
        pytest.param("onnx", ["1/model.onnx", "2/notes.txt"], r"version 2 of the onnx model", id="highest-version-empty"),
        pytest.param("onnx", ["model.onnx", "2/.part-of-something"], r"version 2 of the onnx model .*found: none", id="hidden-only-version"),
    ],
)
def test_folders_ovms_cannot_load_are_refused_with_what_was_found(model_type: str, files: list[str], match: str) -> None:
    with pytest.raises(FailedPrecondition, match=match):
        layout(model_type=model_type, files=files)


_part = st.sampled_from(["1", "2", "10", "m", "sub"])
_leaf = st.sampled_from(["model.xml", "model.bin", "net.xml", "w.bin", "model.onnx", "a.onnx", "x.txt", ".hidden"])
_paths = st.lists(st.tuples(st.lists(_part, max_size=2), _leaf).map(lambda t: "/".join([*t[0], t[1]])), max_size=6, unique=True)


@given(files=_paths, model_type=st.sampled_from(["onnx", "openvino_ir"]))
def test_a_plan_is_always_a_valid_base_path_or_a_clear_refusal(files: list[str], model_type: str) -> None:
    # a file and a folder of the same name cannot both exist: drop such sets
    dirs = {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
    if dirs & set(files):
        return
    try:
        plan = layout(model_type=model_type, files=files)
    except FailedPrecondition as err:
        assert err.message
        return
    sources = [src for src, _ in plan.moves]
    targets = [dst for _, dst in plan.moves]
    assert set(sources) <= set(files) and len(set(targets)) == len(targets)
    final = (set(files) - set(sources)) | set(targets)
    assert len(final) == len(files)  # nothing overwritten
    assert plan.model_file in final and plan.model_file.count("/") == 1
    assert plan.model_file.startswith(f"{plan.version}/") and plan.version >= 1
    versions = {int(p.split("/")[0]) for p in final if "/" in p and p.split("/")[0].isdigit()}
    assert plan.version == max(versions)  # what OVMS's default policy serves
    again = layout(model_type=model_type, files=sorted(final))
    assert again.moves == [] and (again.version, again.model_file) == (plan.version, plan.model_file)


# -- config.json --


def test_the_config_file_lists_every_model_sorted_in_ovms_shape() -> None:
    text = config_json({"b__isvc-2": "/models/b__isvc-2", "a__isvc-1": "/models/a__isvc-1"})
    assert json.loads(text) == {
        "model_config_list": [
            {"config": {"name": "a__isvc-1", "base_path": "/models/a__isvc-1"}},
            {"config": {"name": "b__isvc-2", "base_path": "/models/b__isvc-2"}},
        ]
    }


def test_an_empty_config_is_an_empty_list() -> None:
    assert json.loads(config_json({})) == {"model_config_list": []}


# -- statuses --

AVAILABLE_1 = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": "OK"}}
FAILED_2 = {"version": "2", "state": "LOADING", "status": {"error_code": "UNKNOWN", "error_message": "UNKNOWN"}}
ENDED_1 = {"version": "1", "state": "END", "status": {"error_code": "OK", "error_message": "OK"}}


def test_version_statuses_read_ovms_json_sorted_by_version() -> None:
    assert version_statuses({"model_version_status": [FAILED_2, AVAILABLE_1]}) == [
        VersionStatus(1, "AVAILABLE", "OK", "OK"),
        VersionStatus(2, "LOADING", "UNKNOWN", "UNKNOWN"),
    ]


@pytest.mark.parametrize(
    "body",
    [None, [], "x", {"model_version_status": "x"}, {"model_version_status": [1, {"version": "v"}]}, {}],
)
def test_ill_formed_statuses_are_no_versions(body: object) -> None:
    assert version_statuses(body) == []


def test_available_models_are_those_with_a_version_serving() -> None:
    body = {
        "m1": {"model_version_status": [AVAILABLE_1]},
        "m2": {"model_version_status": [FAILED_2]},
        "m3": {"model_version_status": [ENDED_1]},
        "m4": {"model_version_status": []},
        "m5": {"model_version_status": [ENDED_1, {**AVAILABLE_1, "version": "2"}]},
    }
    assert available_models(body) == ["m1", "m5"]
    assert available_models({"error": "x"}) == [] and available_models(None) == []


def test_an_available_version_is_loaded() -> None:
    assert load_outcome([VersionStatus(1, "AVAILABLE")], version=1, model_format="onnx") == LoadOutcome(Outcome.LOADED)


def test_a_failed_load_says_what_ovms_said() -> None:
    result = load_outcome(
        version_statuses({"model_version_status": [FAILED_2]}),
        version=2,
        model_format="openvino_ir",
        reload_error="HTTP 500: Reloading config file failed. Check server logs for more info.",
    )
    assert result.outcome == Outcome.FAILED
    assert result.message == (
        "OVMS could not load the openvino_ir model (version 2: state LOADING, error_code UNKNOWN); OVMS answered "
        "the reload: HTTP 500: Reloading config file failed. Check server logs for more info."
    )


def test_an_error_message_other_than_the_code_is_quoted() -> None:
    result = load_outcome([VersionStatus(1, "LOADING", "FAILED_PRECONDITION", "Cannot compile")], version=1, model_format="onnx")
    assert "error_code FAILED_PRECONDITION: Cannot compile" in result.message


@pytest.mark.parametrize("state", ["START", "LOADING"])
def test_a_version_on_its_way_without_error_is_still_loading(state: str) -> None:
    assert load_outcome([VersionStatus(1, state)], version=1, model_format="onnx").outcome == Outcome.LOADING


@pytest.mark.parametrize("state", ["END", "UNLOADING", "SOMETHING_NEW"])
def test_a_version_ovms_gave_up_on_is_a_failure(state: str) -> None:
    result = load_outcome([VersionStatus(1, state)], version=1, model_format="onnx")
    assert result.outcome == Outcome.FAILED and f"state {state}" in result.message


def test_no_version_at_all_is_a_failure_naming_the_version_folders() -> None:
    result = load_outcome([], version=1, model_format="onnx", reload_error="HTTP 400: x")
    assert result.outcome == Outcome.FAILED
    assert "no version of the onnx model" in result.message and result.message.endswith("reload: HTTP 400: x")


def test_the_wanted_version_decides_else_the_highest() -> None:
    statuses = [VersionStatus(1, "AVAILABLE"), VersionStatus(2, "LOADING", "UNKNOWN", "UNKNOWN")]
    assert load_outcome(statuses, version=1, model_format="onnx").outcome == Outcome.LOADED
    assert load_outcome(statuses, version=2, model_format="onnx").outcome == Outcome.FAILED
    assert load_outcome(statuses, version=3, model_format="onnx").outcome == Outcome.FAILED
