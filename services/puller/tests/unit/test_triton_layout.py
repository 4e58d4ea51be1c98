"""Triton repository entries: upstream's Triton adapter's layout cases, on names and text only."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from meshserve.common.errors import FailedPrecondition
from meshserve.puller.triton_layout import (
    WARM_MODEL,
    keras_savedmodel_path,
    keras_to_convert,
    layout,
    warm_config,
    warm_frameworks,
)


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
    with pytest.raises(FailedPrecondition, match=r"'sklearn'.*served: keras, lightgbm, onnx, openvino_ir, pytorch, tensorflow, xgboost"):
        layout(model_id="m1", model_type="sklearn", files=["model.joblib"], native_backends=set())


CIFAR_CONFIG = """name: "cifar"
platform: "pytorch_libtorch"
max_batch_size: 1
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
"""


def test_upstreams_pytorch_cifar_layout_keeps_its_config_natively() -> None:
    plan = layout(
        model_id="m1", model_type="pytorch", files=["config.pbtxt", "1/model.pt"], native_backends={"pytorch"},
        user_config=CIFAR_CONFIG,
    )
    assert plan.moves == [] and plan.native
    config = parsed(plan.config)
    assert (config.name, config.platform, config.max_batch_size) == ("m1", "pytorch_libtorch", 1)
    assert [i.name for i in config.input] == ["INPUT__0"] and list(config.output[0].dims) == [10]


def test_a_pytorch_file_on_the_python_path_keeps_the_users_inputs_and_outputs() -> None:
    plan = layout(model_id="m1", model_type="pytorch", files=["cifar.pt"], native_backends=set(), user_config=CIFAR_CONFIG)
    assert plan.moves == [("cifar.pt", "1/model.pt")]
    config = parsed(plan.config)
    assert config.backend == "python" and not config.platform and config.max_batch_size == 1
    assert config.parameters["meshserve_framework"].string_value == "pytorch"
    assert [o.name for o in config.output] == ["OUTPUT__0"]


@pytest.mark.parametrize(
    "files",
    [
        # storage path = the SavedModel folder itself (upstream's tensorflow/mnist.savedmodel)
        ["saved_model.pb", "fingerprint.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"],
        # storage path = its parent: the folder keeps its own name
        ["mnist.savedmodel/saved_model.pb", "mnist.savedmodel/variables/variables.index"],
        # a version folder holding the SavedModel's files
        ["1/saved_model.pb", "1/variables/variables.index"],
    ],
    ids=["savedmodel-files", "named-savedmodel-folder", "version-folder"],
)
def test_a_savedmodel_becomes_version_1_model_savedmodel(files: list[str]) -> None:
    plan = layout(model_id="m1", model_type="tensorflow", files=files, native_backends={"tensorflow"})
    placed = {dst for _, dst in plan.moves}
    assert "1/model.savedmodel/saved_model.pb" in placed
    assert "1/model.savedmodel/variables/variables.index" in placed
    config = parsed(plan.config)
    assert config.platform == "tensorflow_savedmodel" and config.name == "m1"


def test_an_upstream_tensorflow_repository_is_kept() -> None:
    files = ["1/model.savedmodel/saved_model.pb", "1/model.savedmodel/variables/variables.index"]
    plan = layout(model_id="m1", model_type="tensorflow", files=files, native_backends=set())
    assert plan.moves == [] and plan.python_model_in == ["1"]
    config = parsed(plan.config)
    assert config.parameters["meshserve_framework"].string_value == "tensorflow"
    assert config.parameters["meshserve_model_file"].string_value == "model.savedmodel"


def test_a_folder_with_two_savedmodels_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match=r"one SavedModel folder.*a/saved_model.pb.*b/saved_model.pb"):
        layout(model_id="m1", model_type="tensorflow", files=["a/saved_model.pb", "b/saved_model.pb"], native_backends=set())


def test_openvino_ir_xml_and_bin_take_the_backends_names_together() -> None:
    plan = layout(model_id="m1", model_type="openvino_ir", files=["1/mnist.xml", "1/mnist.bin"], native_backends={"openvino"})
    assert sorted(plan.moves) == [("1/mnist.bin", "1/model.bin"), ("1/mnist.xml", "1/model.xml")]
    config = parsed(plan.config)
    assert config.backend == "openvino" and not config.platform  # the openvino backend has no platform name


def test_openvino_ir_without_its_weights_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match=r"model.xml but no model.bin"):
        layout(model_id="m1", model_type="openvino_ir", files=["mnist.xml", "other.bin"], native_backends=set())


def test_keras_file_to_convert_and_where_the_savedmodel_goes() -> None:
    assert keras_to_convert(["mnist.h5"]) == "mnist.h5"
    assert keras_savedmodel_path("mnist.h5") == "1/model.savedmodel"
    assert keras_savedmodel_path("3/mnist.h5") == "3/model.savedmodel"
    # already converted (a reload): nothing to do, and the SavedModel is laid out as tensorflow
    converted = [".meshserve-keras/mnist.h5", "1/model.savedmodel/saved_model.pb", "1/model.savedmodel/variables/variables.index"]
    assert keras_to_convert(converted) is None
    plan = layout(model_id="m1", model_type="keras", files=converted, native_backends={"tensorflow"})
    assert plan.moves == [] and parsed(plan.config).platform == "tensorflow_savedmodel"


def test_a_keras_folder_without_one_h5_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match=r"one .h5/.hdf5/.keras file.*found: a.h5, b.h5"):
        keras_to_convert(["a.h5", "b.h5"])


def test_upstreams_fil_layout_keeps_its_config_and_file_names() -> None:
    user = 'backend: "fil"\nmax_batch_size: 0\nparameters { key: "model_type" value { string_value: "xgboost_json" } }\n'
    plan = layout(
        model_id="m1", model_type="xgboost", files=["config.pbtxt", "1/xgboost.json"], native_backends={"fil"}, user_config=user
    )
    assert plan.moves == [] and parsed(plan.config).backend == "fil"
    plan = layout(model_id="m1", model_type="lightgbm", files=["mushroom.txt"], native_backends=set(), user_config=user)
    assert plan.moves == [("mushroom.txt", "1/model.txt")]
    config = parsed(plan.config)
    assert config.backend == "python" and config.parameters["meshserve_framework"].string_value == "fil"
    assert config.parameters["model_type"].string_value == "xgboost_json"  # the user's FIL parameters stay


def test_warm_up_takes_the_python_frameworks_of_the_formats_without_a_native_backend() -> None:
    formats = ["onnx", "pytorch", "keras", "tensorflow", "openvino_ir", "xgboost", "lightgbm"]
    assert warm_frameworks(formats, native_backends=set()) == (["fil", "onnx", "openvino", "pytorch", "tensorflow"], [])
    # a native backend is part of the server process: nothing to warm for its formats
    assert warm_frameworks(formats, native_backends={"onnxruntime", "tensorflow", "fil"}) == (["openvino", "pytorch"], [])


def test_warm_up_names_the_formats_it_does_not_know() -> None:
    assert warm_frameworks(["onnx", "sklearn", "nope"], native_backends=set()) == (["onnx"], ["sklearn", "nope"])


def test_the_warm_up_config_is_a_python_model_with_its_frameworks_and_a_placeholder_tensor() -> None:
    config = parsed(warm_config(["onnx", "tensorflow"]))
    assert config.name == WARM_MODEL and config.backend == "python"
    assert config.parameters["meshserve_warm"].string_value == "onnx,tensorflow"
    assert [(t.name, list(t.dims)) for t in config.input] == [("WARM_IN", [1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("WARM_OUT", [1])]
