"""The warm-up model's embedded ONNX graph (triton_python/model.py runs only inside Triton's
python backend, so its constant is read from the source)."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from meshserve.puller.adapter import PYTHON_MODEL


def _constant(path: Path, name: str) -> str:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError(f"{name} not found in {path}")


def test_the_warm_up_onnx_model_is_the_small_graph_it_says_it_is() -> None:
    data = base64.b64decode(_constant(PYTHON_MODEL, "WARM_ONNX"))
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Relu"]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"X": np.array([[1.0, -2.0, 0.5, 0.0]], np.float32)})
    assert y.tolist() == [[0.0, 0.0, 0.0, 0.0]]  # Relu of (sum = -0.5) in every column
    (y,) = session.run(None, {"X": np.ones((1, 4), np.float32)})
    assert y.tolist() == [[4.0, 4.0, 4.0, 4.0]]
