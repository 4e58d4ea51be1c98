"""Convert a Keras model file (.h5 / .keras) to a TensorFlow SavedModel for Triton.

    python keras_to_savedmodel.py --serve

Run by the puller's Triton adapter with an interpreter that has tensorflow (the Triton
environment), as upstream's adapter converts Keras files before Triton loads them. It
imports tensorflow once, says `{"error": null}` on stdout, then reads one JSON line
`[source, target]` per conversion from stdin and answers each with `{"error": null}` or
`{"error": "<one line>"}` (meshserve.puller.keras_converter drives it); anything else the
libraries print goes to stderr. The SavedModel's `serving_default` signature takes each
model input under its Keras name (`conv2d_input`) and returns each output under the name of
the layer that makes it (`dense_1`): the names Triton's tensorflow backend then exposes, as
with upstream's conversion. The out dir is written next to its final place and renamed into
it, so a failed conversion leaves nothing half-written. Nothing of meshserve is imported
here.
"""

from __future__ import annotations

import json
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


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"


def serve() -> int:
    """One conversion per stdin line, until end of input; replies on the original stdout,
    which no library can write to (fd 1 now points at stderr)."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        import keras  # noqa: F401 - paid once, before the first request
        import tensorflow  # noqa: F401
    except Exception as exc:
        replies.write(json.dumps({"error": _one_line(exc)}) + "\n")
        return 1
    replies.write(json.dumps({"error": None}) + "\n")
    for line in sys.stdin:
        try:
            source, target = json.loads(line)
            convert(source, target)
        except Exception as exc:  # the puller shows this line as the load failure's reason
            replies.write(json.dumps({"error": _one_line(exc)}) + "\n")
        else:
            replies.write(json.dumps({"error": None}) + "\n")
    return 0


def main(argv: list[str]) -> int:
    if argv != ["--serve"]:
        print("usage: keras_to_savedmodel.py --serve", file=sys.stderr)
        return 2
    return serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
