"""Make the example models (small, deterministic, no download).

Writes, under --out (default examples/models), the layout of upstream's example bucket
`modelmesh-example-models` for the formats this stack serves today:

  sklearn/mnist-svm.joblib   SVC(gamma=0.001) on the first half of scikit-learn's 8x8 digits
                             (the MLServer / ModelMesh example model; the 64-float input in
                             examples/inputs/sklearn-mnist.json predicts 8)
  sklearn/iris-logreg.joblib LogisticRegression on iris (a second, tiny model for tests)
  xgboost/mushroom.json      binary:logistic booster on synthetic mushroom-shaped data (126
                             one-hot floats, 22 attributes; upstream's input vector is in
                             examples/inputs/xgboost-mushroom.json)
  lightgbm/mushroom.bst      binary LightGBM booster (text format) on the same data
  xgboost/mushroom-fil/, lightgbm/mushroom-fil/
                             the same boosters in upstream's Triton FIL layout
                             (1/xgboost.json or 1/model.txt, and a config.pbtxt with
                             input__0 FP32 [-1,126] -> output__0 FP32 [-1])
  custom/scaler/, custom/linear-json/
                             copies of the custom runtimes' models in examples/custom/
  onnx/mnist.onnx            upstream's ONNX MNIST signature (Input3 FP32 [1,1,28,28] ->
                             Plus214_Output_0 FP32 [1,10]): a linear classifier fitted on
                             scikit-learn's 8x8 digits upscaled to 28x28, built with onnx.helper

The data sets ship inside scikit-learn or are made from a fixed seed, so nothing is fetched
at run time. The models of the frameworks that live in Triton's environment (pytorch,
tensorflow, keras, openvino_ir) are made by make_framework_models.py, run there; their input
files are written here (examples/inputs/{pytorch-cifar,tensorflow-mnist,keras-mnist,
openvino-mnist}.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import joblib
import numpy as np
from sklearn import datasets, svm
from sklearn.linear_model import LogisticRegression


def make_mnist_svm(out: Path) -> Path:
    digits = datasets.load_digits()
    n = len(digits.images)
    data = digits.images.reshape((n, -1))
    clf = svm.SVC(gamma=0.001)
    clf.fit(data[: n // 2], digits.target[: n // 2])
    path = out / "sklearn" / "mnist-svm.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(clf, path)
    return path


def make_iris(out: Path) -> Path:
    iris = datasets.load_iris()
    clf = LogisticRegression(max_iter=1000)
    clf.fit(iris.data, iris.target)
    path = out / "sklearn" / "iris-logreg.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(clf, path)
    return path


# upstream's mushroom example: 22 categorical attributes one-hot encoded into 126 floats; the
# example vector has a 1.0 at these columns (one per attribute), so each attribute's columns
# run from one of these to the next
MUSHROOM_ONES = (0, 8, 18, 20, 23, 33, 35, 38, 41, 52, 55, 64, 68, 76, 85, 87, 91, 94, 101, 105, 116, 121)
MUSHROOM_FEATURES = 126


def mushroom_vector() -> list[float]:
    row = [0.0] * MUSHROOM_FEATURES
    for i in MUSHROOM_ONES:
        row[i] = 1.0
    return row


def mushroom_data(rows: int = 2000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """One-hot rows of the 22 attributes, labelled by a fixed random linear rule."""
    rng = np.random.default_rng(seed)
    bounds = [*MUSHROOM_ONES, MUSHROOM_FEATURES]
    x = np.zeros((rows, MUSHROOM_FEATURES), dtype=np.float32)
    for start, end in itertools.pairwise(bounds):
        x[np.arange(rows), rng.integers(start, end, size=rows)] = 1.0
    weights = rng.normal(size=MUSHROOM_FEATURES)
    y = (x @ weights > 0).astype(np.int32)
    return x, y


def make_xgboost(out: Path) -> Path:
    import xgboost as xgb

    x, y = mushroom_data()
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "seed": 0, "nthread": 1},
        xgb.DMatrix(x, label=y),
        num_boost_round=10,
    )
    path = out / "xgboost" / "mushroom.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return path


def make_lightgbm(out: Path) -> Path:
    import lightgbm as lgb

    x, y = mushroom_data()
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "seed": 0, "num_threads": 1, "deterministic": True, "verbose": -1},
        lgb.Dataset(x, label=y),
        num_boost_round=10,
    )
    path = out / "lightgbm" / "mushroom.bst"
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return path


FIL_CONFIG = """backend: "fil"
max_batch_size: 0
input [
  {
    name: "input__0"
    data_type: TYPE_FP32
    dims: [ -1, 126 ]
  }
]
output [
  {
    name: "output__0"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }
]
instance_group [ { kind: KIND_CPU } ]
parameters [
  { key: "model_type" value: { string_value: "%s" } },
  { key: "output_class" value: { string_value: "false" } }
]
"""


def make_fil(out: Path) -> list[Path]:
    """Upstream's Triton FIL layouts of the same boosters: `<name>-fil/{1/<file>,config.pbtxt}`."""
    made = []
    for library, source, target, model_type in (
        ("xgboost", "mushroom.json", "xgboost.json", "xgboost_json"),
        ("lightgbm", "mushroom.bst", "model.txt", "lightgbm"),
    ):
        folder = out / library / "mushroom-fil"
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "1" / target).write_bytes((out / library / source).read_bytes())
        (folder / "config.pbtxt").write_text(FIL_CONFIG % model_type)
        made.append(folder / "1" / target)
    return made


def copy_custom(out: Path) -> list[Path]:
    """The custom runtimes' example models (examples/custom/), where `make dev` uploads the
    bucket from: custom/scaler/ (an MLServer model with its own MLModel class) and
    custom/linear-json/model.json (for the SPI runtime)."""
    here = Path(__file__).parent / "custom"
    made = []
    for source, target in (
        (here / "mlserver-model", out / "custom" / "scaler"),
        (here / "spi-runtime" / "model", out / "custom" / "linear-json"),
    ):
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            if path.is_file():
                (target / path.name).write_bytes(path.read_bytes())
                made.append(target / path.name)
    return made


def digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits upscaled (nearest, 3x) and padded to MNIST's 28x28, in [0, 1]."""
    digits = datasets.load_digits()
    big = np.kron(digits.images, np.ones((3, 3))) / 16.0  # (n, 24, 24)
    x = np.zeros((len(big), 28, 28), dtype=np.float32)
    x[:, 2:26, 2:26] = big
    return x, digits.target


def make_onnx(out: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x, y = digits_28()
    clf = LogisticRegression(max_iter=300)
    clf.fit(x.reshape(len(x), -1), y)
    weights = clf.coef_.T.astype(np.float32)  # (784, 10)
    bias = clf.intercept_.astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["Input3", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
            helper.make_node("Add", ["logits", "b"], ["Plus214_Output_0"]),
        ],
        "mnist",
        [helper.make_tensor_value_info("Input3", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("Plus214_Output_0", TensorProto.FLOAT, [1, 10])],
        [
            numpy_helper.from_array(np.array([1, 784], dtype=np.int64), "shape"),
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="meshserve-examples")
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(model)
    path = out / "onnx" / "mnist.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    # the same classifier, for make_framework_models.py (tensorflow, keras, openvino)
    np.savez(out / MNIST_LINEAR, weights=weights, bias=bias)
    return path


MNIST_LINEAR = ".mnist-linear.npz"


def cifar_image(seed: int = 1) -> np.ndarray:
    """A CIFAR-shaped image (3x32x32, pixel/127.5 - 1 as upstream's example input): smooth
    synthetic colour blobs from a fixed seed, since CIFAR-10 itself would be a download."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    image = np.zeros((3, 32, 32))
    for c in range(3):
        cx, cy, width = rng.uniform(0.2, 0.8, size=3)
        image[c] = 255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.05 + width / 5))
    return (np.round(image) / 127.5 - 1).astype(np.float32)


def write_inputs(inputs: Path) -> list[Path]:
    body = {"inputs": [{"name": "predict", "shape": [1, MUSHROOM_FEATURES], "datatype": "FP32", "data": mushroom_vector()}]}
    paths = []
    for name in ("xgboost-mushroom.json", "lightgbm-mushroom.json"):
        path = inputs / name
        path.write_text(json.dumps(body, separators=(",", ":")) + "\n")
        paths.append(path)
    fil = {"inputs": [{**body["inputs"][0], "name": "input__0"}]}  # Triton FIL's input name
    path = inputs / "xgboost-mushroom-fil.json"
    path.write_text(json.dumps(fil, separators=(",", ":")) + "\n")
    paths.append(path)
    x, _ = digits_28()
    digit = x[-1].reshape(1, 1, 28, 28)  # the last digit, never used in upstream's docs: any image works
    body = {"inputs": [{"name": "Input3", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [round(float(v), 4) for v in digit.reshape(-1)]}]}
    path = inputs / "onnx-mnist.json"
    path.write_text(json.dumps(body, separators=(",", ":")) + "\n")
    paths.append(path)
    pixels = [round(float(v), 4) for v in digit.reshape(-1)]
    for name, tensor, shape in (
        ("openvino-mnist.json", "Input3", [1, 1, 28, 28]),
        ("tensorflow-mnist.json", "inputs", [1, 784]),
        ("keras-mnist.json", "conv2d_input", [1, 28, 28, 1]),
    ):
        body = {"inputs": [{"name": tensor, "shape": shape, "datatype": "FP32", "data": pixels}]}
        path = inputs / name
        path.write_text(json.dumps(body, separators=(",", ":")) + "\n")
        paths.append(path)
    image = [round(float(v), 6) for v in cifar_image().reshape(-1)]
    body = {"inputs": [{"name": "INPUT__0", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": image}]}
    path = inputs / "pytorch-cifar.json"
    path.write_text(json.dumps(body, separators=(",", ":")) + "\n")
    paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "models")
    args = parser.parse_args()
    made = [make_mnist_svm(args.out), make_iris(args.out), make_xgboost(args.out), make_lightgbm(args.out), make_onnx(args.out)]
    made += make_fil(args.out)
    made += copy_custom(args.out)
    made += write_inputs(Path(__file__).parent / "inputs")
    for path in made:
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
