"""A Triton python-backend model that serves a model file with its own framework.

Used where the Triton installation has no native backend for the format (the PyPI
`nvidia-pytriton` build ships only the python backend). It runs inside Triton's python
backend stub, in the Triton environment, and exposes the input and output names, data
types and shapes the native backend would: read from the model file itself in
`auto_complete_config`, so a `config.pbtxt` needs no inputs or outputs.

The puller copies this file to `<model id>/1/model.py` and writes two config parameters:
`meshserve_framework` (onnx, pytorch, tensorflow, openvino, fil) and `meshserve_model_file` (the file's path relative to
the version folder). Nothing of meshserve is imported here.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend stub

ONNX_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int8)": "TYPE_INT8",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(string)": "TYPE_STRING",
}


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def _model_path(config: dict[str, Any], version_dir: str) -> str:
    name = _parameters(config).get("meshserve_model_file", "")
    path = os.path.normpath(os.path.join(version_dir, name))
    if not name or not path.startswith(os.path.normpath(version_dir) + os.sep):
        raise pb_utils.TritonModelException(f"meshserve_model_file {name!r} is not a file of the model")
    return path


def _dims(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


class _Onnx:
    def __init__(self, path: str, config: dict[str, Any]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    def signature(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        def describe(items: Any) -> list[dict[str, Any]]:
            out = []
            for item in items:
                if item.type not in ONNX_TO_TRITON:
                    raise pb_utils.TritonModelException(f"tensor {item.name!r} has unsupported type {item.type}")
                out.append({"name": item.name, "data_type": ONNX_TO_TRITON[item.type], "dims": _dims(list(item.shape))})
            return out

        return describe(self.session.get_inputs()), describe(self.session.get_outputs())

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return list(self.session.run(outputs, inputs))


class _Torch:
    """A TorchScript module, called as Triton's libtorch backend calls it: the inputs in the
    config's order as positional arguments (INPUT__0, INPUT__1, ...), the outputs (a tensor
    or a tuple/list of them) matched to the config's outputs by position."""

    def __init__(self, path: str, config: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.module = torch.jit.load(path, map_location="cpu").eval()
        self.inputs = [i["name"] for i in config.get("input", [])]
        self.outputs = [o["name"] for o in config.get("output", [])]

    def signature(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        raise pb_utils.TritonModelException(
            "a pytorch model needs its inputs and outputs in config.pbtxt (TorchScript does not record "
            "their types and shapes; Triton's pytorch backend needs them too): ship config.pbtxt beside 1/model.pt"
        )

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        args = [self.torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in self.inputs]
        with self.torch.inference_mode():
            result = self.module(*args)
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(values) != len(self.outputs):
            raise ValueError(f"the module returned {len(values)} tensors, the config names {len(self.outputs)} outputs")
        by_name = dict(zip(self.outputs, values, strict=True))
        return [by_name[name].detach().numpy() for name in outputs]


TF_TO_TRITON = {
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int16": "TYPE_INT16",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
    "string": "TYPE_STRING",
}


class _TensorFlow:
    """A SavedModel's `serving_default` signature: its input and output keys are the tensor
    names, as Triton's tensorflow backend exposes them."""

    def __init__(self, path: str, config: dict[str, Any]) -> None:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised in this process
            pass
        self.tf = tf
        self.loaded = tf.saved_model.load(path)
        signatures = dict(self.loaded.signatures)
        if "serving_default" not in signatures:
            raise pb_utils.TritonModelException(
                f"the SavedModel has no serving_default signature (it has: {', '.join(signatures) or 'none'})"
            )
        self.fn = signatures["serving_default"]

    def signature(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        def describe(specs: dict[str, Any]) -> list[dict[str, Any]]:
            out = []
            for name, spec in sorted(specs.items()):
                dtype = spec.dtype.name
                if dtype not in TF_TO_TRITON:
                    raise pb_utils.TritonModelException(f"tensor {name!r} has unsupported type {dtype}")
                dims = _dims(spec.shape.as_list()) if spec.shape.rank is not None else [-1]
                out.append({"name": name, "data_type": TF_TO_TRITON[dtype], "dims": dims})
            return out

        return describe(self.fn.structured_input_signature[1]), describe(self.fn.structured_outputs)

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        result = self.fn(**{name: self.tf.constant(value) for name, value in inputs.items()})
        return [result[name].numpy() for name in outputs]


OPENVINO_TO_TRITON = {
    "f32": "TYPE_FP32",
    "f64": "TYPE_FP64",
    "f16": "TYPE_FP16",
    "i64": "TYPE_INT64",
    "i32": "TYPE_INT32",
    "i16": "TYPE_INT16",
    "i8": "TYPE_INT8",
    "u8": "TYPE_UINT8",
    "boolean": "TYPE_BOOL",
}


class _OpenVino:
    """An OpenVINO IR (model.xml + model.bin) compiled for the CPU; tensors by their names."""

    def __init__(self, path: str, config: dict[str, Any]) -> None:
        import openvino as ov

        core = ov.Core()
        self.model = core.read_model(path)
        self.compiled = core.compile_model(self.model, "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1})

    def signature(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        def describe(ports: Any) -> list[dict[str, Any]]:
            out = []
            for port in ports:
                name, dtype = port.get_any_name(), port.get_element_type().get_type_name()
                if dtype not in OPENVINO_TO_TRITON:
                    raise pb_utils.TritonModelException(f"tensor {name!r} has unsupported type {dtype}")
                shape = port.get_partial_shape()
                dims = [d.get_length() if d.is_static else -1 for d in shape] if shape.rank.is_static else [-1]
                out.append({"name": name, "data_type": OPENVINO_TO_TRITON[dtype], "dims": dims})
            return out

        return describe(self.model.inputs), describe(self.model.outputs)

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        result = self.compiled(inputs)
        by_name = {port.get_any_name(): value for port, value in result.items()}
        return [np.asarray(by_name[name]) for name in outputs]


class _Fil:
    """An xgboost or lightgbm tree model, answered as Triton's FIL backend answers: one FP32
    input `input__0` [rows, features] and one FP32 output `output__0` with, per row, the
    model's prediction (a probability for a classifier) or, with the config parameter
    `output_class: "true"`, the class (probability > `threshold`, default 0.5)."""

    def __init__(self, path: str, config: dict[str, Any]) -> None:
        params = _parameters(config)
        model_type = params.get("model_type") or ("lightgbm" if path.endswith(".txt") else "xgboost_json")
        self.output_class = params.get("output_class", "false").lower() == "true"
        self.threshold = float(params.get("threshold") or 0.5)
        if model_type.startswith("xgboost"):
            import xgboost as xgb

            self.xgb = xgb
            self.booster: Any = xgb.Booster(params={"nthread": 1}, model_file=path)
            self.features = int(self.booster.num_features())
        elif model_type == "lightgbm":
            import lightgbm as lgb

            self.xgb = None
            self.booster = lgb.Booster(model_file=path, params={"num_threads": 1})
            self.features = int(self.booster.num_feature())
        else:
            raise pb_utils.TritonModelException(f"FIL model_type {model_type!r} is not served here (xgboost, xgboost_json, lightgbm)")
        self.max_batch_size = int(config.get("max_batch_size") or 0)
        outputs = config.get("output") or [{"name": "output__0", "dims": [-1]}]
        self.output_dims = [int(d) for d in outputs[0].get("dims", [-1])]

    def signature(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return (
            [{"name": "input__0", "data_type": "TYPE_FP32", "dims": [-1, self.features]}],
            [{"name": "output__0", "data_type": "TYPE_FP32", "dims": [-1]}],
        )

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        x = next(iter(inputs.values())) if "input__0" not in inputs else inputs["input__0"]
        x = x.reshape(-1, self.features)
        y = self.booster.predict(self.xgb.DMatrix(x) if self.xgb is not None else x)
        y = np.asarray(y, dtype=np.float32)
        if self.output_class:
            y = (y > self.threshold).astype(np.float32)
        shape = [len(x), *self.output_dims] if self.max_batch_size > 0 else self.output_dims
        return [y.reshape(shape) for _ in outputs]


FRAMEWORKS = {"onnx": _Onnx, "pytorch": _Torch, "tensorflow": _TensorFlow, "openvino": _OpenVino, "fil": _Fil}


# Y = Relu(X @ ones(4, 4)), X float [1, 4]: an ONNX model (opset 13) of 169 bytes, made
# with onnx.helper and checked against its graph by the puller's unit tests
WARM_ONNX = (
    "CAg6ngEKEQoBWAoBVxIBSCIGTWF0TXVsCgwKAUgSAVkiBFJlbHUSBHdhcm0qSwgECAQQAUIBV0pAAACAPwAAgD8AAIA/AACAPwAAgD8AAIA/"
    "AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAP1oTCgFYEg4KDAgBEggKAggBCgIIBGITCgFZEg4KDAgBEggKAggBCgII"
    "BEIECgAQDQ=="
)


def _warm_onnx() -> None:
    import base64

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(base64.b64decode(WARM_ONNX), sess_options=options, providers=["CPUExecutionProvider"])
    session.run(None, {"X": np.ones((1, 4), np.float32)})


def _warm_pytorch() -> None:
    import torch

    torch.set_num_threads(1)
    (torch.zeros(2) + 1).sum()


def _warm_tensorflow() -> None:
    import tensorflow as tf

    (tf.constant([1.0]) + 1.0).numpy()


def _warm_openvino() -> None:
    import openvino as ov
    import openvino.opset13 as ops

    # convolution, pooling and a dense layer: the CPU plugin's common kernels
    x = ops.parameter([1, 1, 8, 8], np.float32, name="x")
    conv = ops.relu(ops.convolution(x, ops.constant(np.ones((2, 1, 3, 3), np.float32)), [1, 1], [1, 1], [1, 1], [1, 1]))
    pooled = ops.max_pool(conv, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2]).output(0)
    flat = ops.reshape(pooled, ops.constant(np.array([1, 32], np.int64)), False)
    dense = ops.add(ops.matmul(flat, ops.constant(np.ones((32, 4), np.float32)), False, False), ops.constant(np.ones((1, 4), np.float32)))
    compiled = ov.Core().compile_model(ov.Model([dense], [x]), "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1})
    compiled(np.ones((1, 1, 8, 8), np.float32))


def _warm_fil() -> None:
    import lightgbm  # noqa: F401
    import xgboost  # noqa: F401


WARM = {"onnx": _warm_onnx, "pytorch": _warm_pytorch, "tensorflow": _warm_tensorflow, "openvino": _warm_openvino, "fil": _warm_fil}


class _Warm:
    """The pod's warm-up model (parameter `meshserve_warm`: frameworks, comma-separated): it
    imports each framework and runs a trivial model or operation with it, so their libraries are mapped
    before the first model of each format loads, and that model's stub is charged only its
    own pages. It serves nothing."""

    def __init__(self, frameworks: str) -> None:
        for name in [f for f in frameworks.split(",") if f]:
            if name not in WARM:
                raise pb_utils.TritonModelException(f"meshserve_warm: unknown framework {name!r}")
            WARM[name]()

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        raise ValueError("the warm-up model serves nothing")


def _open(config: dict[str, Any], version_dir: str) -> Any:
    framework = _parameters(config).get("meshserve_framework", "")
    if framework not in FRAMEWORKS:
        raise pb_utils.TritonModelException(
            f"meshserve_framework {framework!r} is not one this model serves ({', '.join(sorted(FRAMEWORKS))})"
        )
    return FRAMEWORKS[framework](_model_path(config, version_dir), config)


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config: Any) -> Any:
        config = auto_complete_model_config.as_dict()
        if config.get("input") and config.get("output"):
            return auto_complete_model_config
        model_dir = os.path.join(os.environ.get("MESHSERVE_TRITON_REPOSITORY", ""), config["name"])
        versions = [int(d) for d in os.listdir(model_dir) if d.isdigit() and int(d) > 0] if os.path.isdir(model_dir) else []
        version_dir = os.path.join(model_dir, str(max(versions, default=1)))  # Triton serves the latest
        inputs, outputs = _open(config, version_dir).signature()
        for item in inputs:
            auto_complete_model_config.add_input(item)
        for item in outputs:
            auto_complete_model_config.add_output(item)
        auto_complete_model_config.set_max_batch_size(0)
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        warm = _parameters(config).get("meshserve_warm")
        if warm is not None:
            self.model = _Warm(warm)
            self.outputs = []
            return
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.model = _open(config, version_dir)
        self.outputs = [o["name"] for o in config.get("output", [])]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                inputs = {t.name(): t.as_numpy() for t in request.inputs()}
                wanted = [o for o in request.requested_output_names()] or self.outputs
                values = self.model.run(inputs, wanted)
                tensors = [pb_utils.Tensor(name, np.asarray(value)) for name, value in zip(wanted, values, strict=True)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # the client gets the framework's reason
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
