"""Run one example model with its own framework, outside meshserve (not a test module).

    python direct_frameworks.py <framework> <model path> <input .npy> <input name> <output name> <out .npy>

Run by conftest.direct_framework with Triton's environment (.venv-triton), where torch,
tensorflow, keras and openvino live; the test compares what meshserve answered with this.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def run(framework: str, path: str, x: np.ndarray, inp: str, out: str) -> np.ndarray:
    if framework == "pytorch":
        import torch

        with torch.inference_mode():
            return torch.jit.load(path, map_location="cpu").eval()(torch.from_numpy(x)).numpy()
    if framework == "tensorflow":
        import tensorflow as tf

        return tf.saved_model.load(path).signatures["serving_default"](**{inp: tf.constant(x)})[out].numpy()
    if framework == "keras":  # the .h5 itself, not the SavedModel meshserve converted it to
        import keras

        return np.asarray(keras.models.load_model(path, compile=False)(x, training=False))
    if framework == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU")
        result = compiled({inp: x})
        return np.asarray(next(v for port, v in result.items() if port.get_any_name() == out))
    raise SystemExit(f"unknown framework {framework}")


if __name__ == "__main__":
    framework, path, data, inp, out, target = sys.argv[1:7]
    np.save(target, run(framework, path, np.load(data), inp, out))
