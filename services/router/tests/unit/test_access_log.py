"""The access-log line (`access.write`, called by `metrics.observe_request`): off by
default, one record with every field when on, in text and as JSON keys."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from pythonjsonlogger.json import JsonFormatter

from meshserve.router import access, metrics


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("meshserve.router.access")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        access.configure(enabled=False)


def _observe(**extra: object) -> None:
    metrics.observe_request(
        model="m1", protocol="grpc", method="ModelInfer", code="OK", seconds=0.0125,
        request_bytes=120, response_bytes=80, **extra,  # type: ignore[arg-type]
    )


def test_off_by_default_no_line(captured: io.StringIO) -> None:
    _observe(pod="pod-0")
    assert captured.getvalue() == ""


def test_on_one_json_line_per_request_with_every_field(captured: io.StringIO) -> None:
    access.configure(enabled=True)
    _observe(pod="pod-0", vmodel="vm1", path="envoy")
    metrics.observe_request(model="", protocol="rest", method="ModelInfer", code="404", seconds=0.001)
    first, second = (json.loads(line) for line in captured.getvalue().splitlines())
    assert {k: first[k] for k in ("model_id", "vmodel_id", "pod", "status", "ms", "request_bytes",
                                  "response_bytes", "protocol", "method", "data_path")} == {
        "model_id": "m1", "vmodel_id": "vm1", "pod": "pod-0", "status": "OK", "ms": 12.5, "request_bytes": 120,
        "response_bytes": 80, "protocol": "grpc", "method": "ModelInfer", "data_path": "envoy",
    }  # fmt: skip
    assert "model_id=m1 vmodel_id=vm1 pod=pod-0 status=OK" in first["message"]
    assert (second["model_id"], second["pod"], second["status"], second["request_bytes"]) == ("-", "-", "404", -1)
