"""The finalizer patches (pure), applied with the fake API server's RFC 6902 implementation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from meshserve.controller.finalizers import FINALIZER, add_patch, has_finalizer, remove_patch

_spec = importlib.util.spec_from_file_location("_fakekube", Path(__file__).parents[1] / "fakekube" / "server.py")
assert _spec is not None and _spec.loader is not None
fakekube = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fakekube   # its dataclasses look their module up there
_spec.loader.exec_module(fakekube)


def cr(**meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "x", "resourceVersion": "7", **meta}, "spec": {}}


def test_added_to_a_cr_without_finalizers_and_appended_to_others() -> None:
    added = fakekube.json_patch(cr(), add_patch(cr()))
    assert added["metadata"]["finalizers"] == [FINALIZER]
    other = cr(finalizers=["other.example/x"])
    assert fakekube.json_patch(other, add_patch(other))["metadata"]["finalizers"] == ["other.example/x", FINALIZER]


def test_not_added_twice_nor_to_a_cr_being_deleted() -> None:
    assert add_patch(cr(finalizers=[FINALIZER])) is None
    assert add_patch(cr(deletionTimestamp="2026-01-01T00:00:00Z")) is None


def test_a_stale_view_fails_instead_of_clobbering() -> None:
    seen = cr()                                              # our view: no finalizers, rv 7
    server = cr(resourceVersion="8", finalizers=["other.example/x"])
    with pytest.raises(ValueError):
        fakekube.json_patch(server, add_patch(seen))
    stale = cr(finalizers=["a.example/x", FINALIZER])
    moved = cr(finalizers=[FINALIZER])                       # the other one was removed meanwhile
    with pytest.raises((ValueError, IndexError)):           # the fake answers both with 422
        fakekube.json_patch(moved, remove_patch(stale))


def test_removed_only_where_it_is() -> None:
    held = cr(finalizers=["a.example/x", FINALIZER, "b.example/y"])
    assert fakekube.json_patch(held, remove_patch(held))["metadata"]["finalizers"] == ["a.example/x", "b.example/y"]
    assert remove_patch(cr()) is None and not has_finalizer(cr())
