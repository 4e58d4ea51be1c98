"""Make the example models of the frameworks in Triton's environment (run with .venv-triton).

Writes, under --out (default examples/models), in the layout of upstream's example bucket:

  pytorch/cifar/1/model.pt        TorchScript CNN of CIFAR-10's shapes (INPUT__0 FP32
  pytorch/cifar/config.pbtxt      [1,3,32,32] -> OUTPUT__0 FP32 [1,10]), weights from a fixed
                                  seed; the config is upstream's (platform pytorch_libtorch,
                                  max_batch_size 1, dims without the batch)
  tensorflow/mnist.savedmodel/    a SavedModel whose serving signature takes `inputs` FP32
                                  [-1,784] and returns `classes` INT64 [-1,1] and
                                  `probabilities` FP32 [-1,10]
  keras/mnist.h5                  a Keras model saved as HDF5: `conv2d_input` FP32
                                  [-1,28,28,1] -> conv2d (1x1, identity) -> flatten ->
                                  `dense_1` (softmax, 10)
  openvino/mnist/1/mnist.{xml,bin} onnx/mnist.onnx converted to OpenVINO IR (Input3 ->
                                  Plus214_Output_0)

The three MNIST models use the linear classifier make_models.py fitted for onnx/mnist.onnx
(saved beside it as .mnist-linear.npz), so every MNIST example gives the same digit. Run
make_models.py first.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

MNIST_LINEAR = ".mnist-linear.npz"

CIFAR_CONFIG = """name: "cifar"
platform: "pytorch_libtorch"
max_batch_size: 1
input [
  {
    name: "INPUT__0"
    data_type: TYPE_FP32
    dims: [ 3, 32, 32 ]
  }
]
output [
  {
    name: "OUTPUT__0"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
"""


def make_pytorch(out: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()
    folder = out / "pytorch" / "cifar"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    path = folder / "1" / "model.pt"
    torch.jit.script(model).save(str(path))
    (folder / "config.pbtxt").write_text(CIFAR_CONFIG)
    return path


def _mnist_linear(out: Path) -> tuple[np.ndarray, np.ndarray]:
    saved = np.load(out / MNIST_LINEAR)
    return saved["weights"].astype(np.float32), saved["bias"].astype(np.float32)


def make_tensorflow(out: Path) -> Path:
    import tensorflow as tf

    weights, bias = _mnist_linear(out)

    class Mnist(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(weights, name="w")
            self.b = tf.Variable(bias, name="b")

        @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name="inputs")])
        def serve(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            logits = tf.matmul(inputs, self.w) + self.b
            return {
                "classes": tf.expand_dims(tf.argmax(logits, axis=1, output_type=tf.int64), 1),
                "probabilities": tf.nn.softmax(logits),
            }

    module = Mnist()
    path = out / "tensorflow" / "mnist.savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def make_keras(out: Path) -> Path:
    import keras

    weights, bias = _mnist_linear(out)
    inputs = keras.Input((28, 28, 1), name="conv2d_input")
    x = keras.layers.Conv2D(1, 1, use_bias=False, name="conv2d")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="dense_1")(x)
    model = keras.Model(inputs, outputs, name="mnist")
    model.get_layer("conv2d").set_weights([np.ones((1, 1, 1, 1), dtype=np.float32)])
    model.get_layer("dense_1").set_weights([weights, bias])
    path = out / "keras" / "mnist.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


def make_openvino(out: Path) -> Path:
    import openvino as ov

    model = ov.convert_model(str(out / "onnx" / "mnist.onnx"))
    folder = out / "openvino" / "mnist" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mnist.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "models")
    args = parser.parse_args()
    for make in (make_pytorch, make_tensorflow, make_keras, make_openvino):
        path = make(args.out)
        size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
        print(f"wrote {path} ({size} bytes)")


if __name__ == "__main__":
    main()
