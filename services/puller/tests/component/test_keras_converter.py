"""The warm Keras converter against the real tensorflow in .venv-triton: one child process
converts model after model, reports a bad file in its reply and keeps going, and is started
again after it dies."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from meshserve.common.errors import FailedPrecondition
from meshserve.puller.keras_converter import KerasConverter

ROOT = Path(__file__).resolve().parents[4]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
MNIST_H5 = ROOT / "examples" / "models" / "keras" / "mnist.h5"


def _pid(converter: KerasConverter) -> int:
    assert converter._child is not None and converter._child.returncode is None
    return converter._child.pid


async def test_one_child_converts_model_after_model_and_survives_a_bad_file(tmp_path: Path) -> None:
    converter = KerasConverter(python=str(TRITON_PYTHON))
    try:
        await converter.prestart()
        pid = _pid(converter)
        for name in ("a", "b"):
            source = tmp_path / name / "mnist.h5"
            source.parent.mkdir()
            shutil.copy(MNIST_H5, source)
            await converter.convert(source, tmp_path / name / "1" / "model.savedmodel", timeout=120)
            assert (tmp_path / name / "1" / "model.savedmodel" / "saved_model.pb").is_file()
        bad = tmp_path / "bad.h5"
        bad.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
        with pytest.raises(FailedPrecondition, match=r"could not be converted to a SavedModel: .+") as caught:
            await converter.convert(bad, tmp_path / "bad" / "model.savedmodel", timeout=120)
        assert "\n" not in caught.value.message
        assert not (tmp_path / "bad").exists()  # nothing half-written
        assert _pid(converter) == pid  # the same warm process throughout
    finally:
        await converter.close()


async def test_a_dead_child_is_reported_then_replaced(tmp_path: Path) -> None:
    converter = KerasConverter(python=str(TRITON_PYTHON))
    try:
        await converter.prestart()
        pid = _pid(converter)
        os.kill(pid, signal.SIGKILL)
        source = tmp_path / "mnist.h5"
        shutil.copy(MNIST_H5, source)
        with pytest.raises(FailedPrecondition, match="exited with status -9"):
            await converter.convert(source, tmp_path / "one" / "model.savedmodel", timeout=120)
        await converter.convert(source, tmp_path / "two" / "model.savedmodel", timeout=120)
        assert (tmp_path / "two" / "model.savedmodel" / "saved_model.pb").is_file()
        assert _pid(converter) != pid
    finally:
        await converter.close()


async def test_an_interpreter_without_tensorflow_or_missing_is_a_clear_error(tmp_path: Path) -> None:
    for python, reason in ((str(tmp_path / "no-python"), "cannot run"), (shutil.which("python3") or "/usr/bin/python3", "No module named")):
        converter = KerasConverter(python=python)
        try:
            with pytest.raises(FailedPrecondition, match=reason):
                await converter.convert(MNIST_H5, tmp_path / "out", timeout=120)
        finally:
            await converter.close()
