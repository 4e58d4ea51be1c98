"""Convert a Keras model file (.h5 / .keras) to a TensorFlow SavedModel for Triton.

    python keras_to_savedmodel.py <model.h5> <out dir>

Run by the puller's Triton adapter with an interpreter that has tensorflow (the Triton
environment), as upstream's adapter converts Keras files before Triton loads them. The
SavedModel's `serving_default` signature takes each model input under its Keras name
(`conv2d_input`) and returns each output under the name of the layer that makes it
(`dense_1`): the names Triton's tensorflow backend then exposes, as with upstream's
conversion. The out dir is written next to its final place and renamed into it, so a
failed conversion leaves nothing half-written. Errors go to stderr in one line; the exit
status is 1. Nothing of meshserve is imported here.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _output_names(model: Any) -> list[str]:
    names = list(getattr(model, "output_names", None) or [])
    if len(names) == len(model.outputs):
        return names
    return [t._keras_history.operation.name for t in model.outputs]  # the layers that make them


def convert(source: str, target: str) -> None:
    import keras
    import tensorflow as tf

    model = keras.models.load_model(source, compile=False)
    input_names = [getattr(t, "name", "") or f"input_{i}" for i, t in enumerate(model.inputs)]
    output_names = _output_names(model)
    specs = [tf.TensorSpec(t.shape, t.dtype, name=n) for t, n in zip(model.inputs, input_names, strict=True)]

    def serve(*args: Any) -> dict[str, Any]:
        result = model(list(args) if len(args) > 1 else args[0], training=False)
        values = result if isinstance(result, (list, tuple)) else [result]
        return dict(zip(output_names, values, strict=True))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".keras-", dir=parent)
    try:
        archive.write_out(os.path.join(scratch, "savedmodel"), verbose=False)
        os.replace(os.path.join(scratch, "savedmodel"), target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: keras_to_savedmodel.py <model.h5> <out dir>", file=sys.stderr)
        return 2
    try:
        convert(argv[0], argv[1])
    except Exception as exc:  # the puller shows this line as the load failure's reason
        print(f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
