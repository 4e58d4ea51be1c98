"""Payload processors' configuration and events: URLs are http(s) or refused at start-up,
space- or comma-separated; the CloudEvent has upstream's attributes and the payload."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from meshserve.router.payloads import REQUEST_TYPE, RESPONSE_TYPE, build_event
from meshserve.router.settings import RouterSettings


def test_urls_are_space_or_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSERVE_ROUTER_PAYLOAD_PROCESSORS", "http://a:8080/x, https://b/events  http://c")
    assert RouterSettings().payload_processors == ["http://a:8080/x", "https://b/events", "http://c"]
    monkeypatch.delenv("MESHSERVE_ROUTER_PAYLOAD_PROCESSORS")
    assert RouterSettings().payload_processors == []


@pytest.mark.parametrize("url", ["ftp://a/x", "a:8080", "http://", "file:///tmp/x"])
def test_a_url_that_is_not_http_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("MESHSERVE_ROUTER_PAYLOAD_PROCESSORS", f"http://ok/ {url}")
    with pytest.raises(ValidationError, match="is not an http\\(s\\) URL"):
        RouterSettings()


def test_the_events_of_a_request_and_its_response() -> None:
    common = {"event_id": "id-1", "source": "meshserve-router/r1", "model": "m1", "method": "ModelInfer", "protocol": "rest"}
    request = build_event(kind="request", vmodel="vm1", data=b'{"inputs": []}', **common)  # type: ignore[arg-type]
    response = build_event(kind="response", vmodel=None, data=b"\x00\x01", status="200", **common)  # type: ignore[arg-type]
    assert request.headers["ce-type"] == REQUEST_TYPE and response.headers["ce-type"] == RESPONSE_TYPE
    assert {k: request.headers[k] for k in ("ce-specversion", "ce-id", "ce-source", "ce-modelid", "ce-vmodelid")} == {
        "ce-specversion": "1.0", "ce-id": "id-1", "ce-source": "meshserve-router/r1", "ce-modelid": "m1",
        "ce-vmodelid": "vm1",
    }  # fmt: skip
    assert "ce-status" not in request.headers and response.headers["ce-status"] == "200"
    assert "ce-vmodelid" not in response.headers
    body = json.loads(response.body)
    assert (body["id"], body["kind"], body["modelid"], body["status"]) == ("id-1", "response", "m1", "200")
    assert base64.b64decode(body["data"]) == b"\x00\x01"
    assert base64.b64decode(json.loads(request.body)["data"]) == b'{"inputs": []}'
