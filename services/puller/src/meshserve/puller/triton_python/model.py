"""A Triton python-backend model that serves a model file with its own framework.

Used where the Triton installation has no native backend for the format (the PyPI
`nvidia-pytriton` build ships only the python backend). It runs inside Triton's python
backend stub, in the Triton environment, and exposes the input and output names, data
types and shapes the native backend would: read from the model file itself in
`auto_complete_config`, so a `config.pbtxt` needs no inputs or outputs.

The puller copies this file to `<model id>/1/model.py` and writes two config parameters:
`meshserve_framework` (onnx, ...) and `meshserve_model_file` (the file's path relative to
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
    def __init__(self, path: str) -> None:
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


FRAMEWORKS = {"onnx": _Onnx}


def _open(config: dict[str, Any], version_dir: str) -> Any:
    framework = _parameters(config).get("meshserve_framework", "")
    if framework not in FRAMEWORKS:
        raise pb_utils.TritonModelException(
            f"meshserve_framework {framework!r} is not one this model serves ({', '.join(sorted(FRAMEWORKS))})"
        )
    return FRAMEWORKS[framework](_model_path(config, version_dir))


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config: Any) -> Any:
        config = auto_complete_model_config.as_dict()
        if config.get("input") and config.get("output"):
            return auto_complete_model_config
        version_dir = os.path.join(os.environ.get("MESHSERVE_TRITON_REPOSITORY", ""), config["name"], "1")
        inputs, outputs = _open(config, version_dir).signature()
        for item in inputs:
            auto_complete_model_config.add_input(item)
        for item in outputs:
            auto_complete_model_config.add_output(item)
        auto_complete_model_config.set_max_batch_size(0)
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
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
