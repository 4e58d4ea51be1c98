"""Triton repository entries: upstream's Triton adapter's layout cases, on names and text only."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from meshserve.common.errors import FailedPrecondition
from meshserve.puller.triton_layout import layout


def parsed(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_a_single_onnx_file_moves_into_version_1_under_the_backends_name() -> None:
    plan = layout(model_id="m1", model_type="onnx", files=["mnist.onnx"], native_backends={"onnxruntime"})
    assert plan.moves == [("mnist.onnx", "1/model.onnx")]
    config = parsed(plan.config)
    assert config.name == "m1" and config.platform == "onnxruntime_onnx" and not config.backend
    assert plan.native and plan.python_model_in == []


def test_without_the_native_backend_the_python_model_serves_the_same_file() -> None:
    plan = layout(model_id="m1", model_type="onnx", files=["mnist.onnx"], native_backends=set())
    config = parsed(plan.config)
    assert config.backend == "python" and not config.platform
    assert config.parameters["meshserve_framework"].string_value == "onnx"
    assert config.parameters["meshserve_model_file"].string_value == "model.onnx"
    assert plan.python_model_in == ["1"] and not plan.native


def test_an_upstream_layout_is_kept_and_the_users_config_renamed() -> None:
    user = 'name: "zoo"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\ninput { name: "x" data_type: TYPE_FP32 dims: [4] }\n'
    plan = layout(
        model_id="m1", model_type="onnx", files=["config.pbtxt", "1/model.onnx"], native_backends={"onnxruntime"}, user_config=user
    )
    assert plan.moves == []
    config = parsed(plan.config)
    assert config.name == "m1" and config.max_batch_size == 8 and config.input[0].name == "x"


def test_the_users_config_on_the_python_path_keeps_its_inputs_and_batching() -> None:
    user = 'name: "zoo"\nmax_batch_size: 4\noutput { name: "y" data_type: TYPE_FP32 dims: [2] }\n'
    plan = layout(model_id="m1", model_type="onnx", files=["1/model.onnx"], native_backends=set(), user_config=user)
    config = parsed(plan.config)
    assert config.backend == "python" and config.max_batch_size == 4 and config.output[0].name == "y"


def test_several_versions_each_keep_their_folder() -> None:
    plan = layout(model_id="m1", model_type="onnx", files=["1/model.onnx", "2/model.onnx"], native_backends=set())
    assert plan.moves == [] and plan.python_model_in == ["1", "2"]


def test_a_differently_named_file_inside_a_version_folder_is_renamed() -> None:
    plan = layout(model_id="m1", model_type="onnx", files=["3/net.onnx", "3/labels.txt"], native_backends={"onnxruntime"})
    assert plan.moves == [("3/net.onnx", "3/model.onnx")]


def test_default_model_filename_in_the_users_config_is_honoured() -> None:
    plan = layout(
        model_id="m1", model_type="onnx", files=["1/net.onnx"], native_backends={"onnxruntime"},
        user_config='default_model_filename: "net.onnx"',
    )
    assert plan.moves == []


def test_other_files_move_along_and_hidden_ones_stay() -> None:
    plan = layout(model_id="m1", model_type="onnx", files=["model.onnx", "labels.txt", ".meshserve-files.json"], native_backends=set())
    assert sorted(plan.moves) == [("labels.txt", "1/labels.txt"), ("model.onnx", "1/model.onnx")]


@pytest.mark.parametrize(
    ("files", "match"),
    [
        (["a.onnx", "b.onnx"], "needs one .onnx file"),
        (["weights.bin"], "needs one .onnx file"),
        ([".meshserve-files.json"], "no model file"),
    ],
)
def test_folders_without_one_model_file_are_refused(files: list[str], match: str) -> None:
    with pytest.raises(FailedPrecondition, match=match):
        layout(model_id="m1", model_type="onnx", files=files, native_backends=set())


def test_a_config_that_does_not_parse_is_refused_with_the_parsers_reason() -> None:
    with pytest.raises(FailedPrecondition, match=r"config.pbtxt does not parse: 1:7"):
        layout(model_id="m1", model_type="onnx", files=["model.onnx"], native_backends=set(), user_config="name: [unclosed")


def test_a_format_triton_does_not_serve_here_names_the_ones_it_does() -> None:
    with pytest.raises(FailedPrecondition, match=r"'sklearn'.*served: onnx"):
        layout(model_id="m1", model_type="sklearn", files=["model.joblib"], native_backends=set())
