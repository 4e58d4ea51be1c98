"""The example model of every format, on every runtime that serves it (shared by
bench.sizes and bench.cold).

One `Case` is one (format, runtime) pair: where its files are in the example bucket (and in
`examples/models/`), which pod kind serves it, and the tensor names of one request (the
input is read from `examples/inputs/`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "models"
INPUTS = ROOT / "examples" / "inputs"

# pod kind -> the ServingRuntime name its pullers register with (devstack's defaults)
RUNTIMES = {"mlserver": "mlserver-1.x", "triton": "triton-2.x", "ovms": "ovms-1.x"}


@dataclass(frozen=True)
class Case:
    label: str  # short name in the tables: "<format>" or "<format>/<variant>"
    format: str  # the model format registered with the scheduler
    path: str  # storage path in the example bucket = path under examples/models
    kind: str  # pod kind: mlserver, triton, ovms
    input_file: str  # examples/inputs/<file>
    inp: str  # input tensor name
    out: str  # output tensor name

    @property
    def runtime(self) -> str:
        return RUNTIMES[self.kind]

    def slug(self) -> str:
        """The label as a piece of a model name (letters, digits and dashes)."""
        return self.label.replace("_", "-").replace("/", "-")

    def data(self) -> np.ndarray:
        tensor = json.loads((INPUTS / self.input_file).read_text())["inputs"][0]
        return np.array(tensor["data"], dtype=np.float32).reshape(tensor["shape"])

    def disk_bytes(self) -> int:
        source = EXAMPLES / self.path
        if source.is_file():
            return source.stat().st_size
        return sum(p.stat().st_size for p in source.rglob("*") if p.is_file())


CASES = [
    Case("sklearn", "sklearn", "sklearn/mnist-svm.joblib", "mlserver", "sklearn-mnist.json", "predict", "predict"),
    Case("xgboost", "xgboost", "xgboost/mushroom.json", "mlserver", "xgboost-mushroom.json", "predict", "predict"),
    Case("lightgbm", "lightgbm", "lightgbm/mushroom.bst", "mlserver", "lightgbm-mushroom.json", "predict", "predict"),
    Case("onnx", "onnx", "onnx/mnist.onnx", "triton", "onnx-mnist.json", "Input3", "Plus214_Output_0"),
    Case("pytorch", "pytorch", "pytorch/cifar", "triton", "pytorch-cifar.json", "INPUT__0", "OUTPUT__0"),
    Case("tensorflow", "tensorflow", "tensorflow/mnist.savedmodel", "triton", "tensorflow-mnist.json", "inputs", "classes"),
    Case("keras", "keras", "keras/mnist.h5", "triton", "keras-mnist.json", "conv2d_input", "dense_1"),
    Case("openvino_ir", "openvino_ir", "openvino/mnist", "triton", "openvino-mnist.json", "Input3", "Plus214_Output_0"),
    Case("xgboost/fil", "xgboost", "xgboost/mushroom-fil", "triton", "xgboost-mushroom.json", "input__0", "output__0"),
    Case("lightgbm/fil", "lightgbm", "lightgbm/mushroom-fil", "triton", "lightgbm-mushroom.json", "input__0", "output__0"),
    Case("openvino_ir", "openvino_ir", "openvino/mnist", "ovms", "openvino-mnist.json", "Input3", "Plus214_Output_0"),
]


def cases(kinds: set[str] | None = None, labels: set[str] | None = None) -> list[Case]:
    """The cases of the given pod kinds / labels (all when None)."""
    return [c for c in CASES if (kinds is None or c.kind in kinds) and (labels is None or c.label in labels)]
