"""Make the example models (small, deterministic, no download).

Writes, under --out (default examples/models), the layout of upstream's example bucket
`modelmesh-example-models` for the formats this stack serves today:

  sklearn/mnist-svm.joblib   SVC(gamma=0.001) on the first half of scikit-learn's 8x8 digits
                             (the MLServer / ModelMesh example model; the 64-float input in
                             examples/inputs/sklearn-mnist.json predicts 8)
  sklearn/iris-logreg.joblib LogisticRegression on iris (a second, tiny model for tests)

The data sets ship inside scikit-learn, so nothing is fetched at run time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "models")
    args = parser.parse_args()
    for path in (make_mnist_svm(args.out), make_iris(args.out)):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
