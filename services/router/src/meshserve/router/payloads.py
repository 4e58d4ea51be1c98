"""Payload processors (upstream's `payloadProcessors`): every inference request and response
is POSTed, as a CloudEvent, to each configured http(s) URL, off the request path.

Each processor has a bounded in-memory queue and one sender task with a pooled HTTP client:
`offer` never awaits and copies nothing (it queues references to the bytes; the sender
builds the event), a full queue drops the event and counts it in
`meshserve_router_payload_events_total{outcome="dropped"}`, and each POST has a short
timeout, so a slow or dead processor costs inference nothing. One sender per processor
posts one event at a time (keep-alive): a processor slower than the request rate loses
events (counted), never requests.

The event is a CloudEvent in binary mode (KServe's inference-logger attributes):
`ce-specversion: 1.0`, `ce-id` (the request's id, shared by its request and response
events, which is how a processor pairs them), `ce-source` (`meshserve-router/<router id>`),
`ce-type` (`org.kubeflow.serving.inference.request` / `.response`), `ce-time`, and the
extensions `ce-modelid`, `ce-vmodelid` (when the request named one), `ce-method`,
`ce-protocol` and, on a response, `ce-status`. The body is ModelMesh's RemotePayloadProcessor
JSON: `{"id", "modelid", "vmodelid", "kind": "request"|"response", "status", "data"}`, with
`data` the payload bytes in base64 (the protobuf message on gRPC, the JSON body on REST).

Only the Python data path sees bodies: with processors configured the router does not
start Envoy (app.RouterApp.run), so every request takes the Python path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from meshserve.router import metrics

log = logging.getLogger(__name__)
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"


@dataclass(frozen=True)
class Event:
    headers: dict[str, str]
    body: bytes


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def build_event(
    *, kind: str, event_id: str, source: str, model: str, vmodel: str | None, method: str, protocol: str,
    data: bytes, status: str | None = None, time: str | None = None,
) -> Event:
    """The CloudEvent of one request (`kind` "request") or response ("response")."""
    headers = {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "ce-time": time or now(),
        "ce-modelid": model,
        "ce-method": method,
        "ce-protocol": protocol,
    }
    if vmodel:
        headers["ce-vmodelid"] = vmodel
    if status is not None:
        headers["ce-status"] = status
    body = {
        "id": event_id, "modelid": model, "vmodelid": vmodel or "", "kind": kind, "status": status or "",
        "data": base64.b64encode(data).decode("ascii"),
    }  # fmt: skip
    return Event(headers, json.dumps(body, separators=(",", ":")).encode())


@dataclass(frozen=True)
class _Answered:
    """What `offer` queues (the bytes, not copied): the events are built by the sender."""

    event_id: str
    model: str
    vmodel: str | None
    method: str
    protocol: str
    request: bytes
    response: bytes | None
    status: str
    time: str  # when it was answered (ce-time)

    def event(self, kind: str, source: str) -> Event:
        return build_event(
            kind=kind, event_id=self.event_id, source=source, model=self.model, vmodel=self.vmodel,
            method=self.method, protocol=self.protocol,
            data=self.request if kind == "request" else self.response or b"",
            status=self.status if kind == "response" else None, time=self.time,
        )


class _Processor:
    def __init__(self, url: str, *, queue_size: int) -> None:
        self.url = url
        self.queue: asyncio.Queue[tuple[str, _Answered]] = asyncio.Queue(maxsize=queue_size)
        self.task: asyncio.Task[None] | None = None


class PayloadProcessors:
    """The configured processors; `offer` from the doors, `start`/`stop` from the app."""

    def __init__(self, urls: Sequence[str], *, source: str, queue_size: int = 256, timeout_seconds: float = 2.0) -> None:
        self.source = source
        self.timeout_seconds = timeout_seconds
        self._processors = [_Processor(url, queue_size=queue_size) for url in urls]
        self._client: httpx.AsyncClient | None = None

    def __bool__(self) -> bool:
        return bool(self._processors)

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.timeout_seconds, limits=httpx.Limits(max_connections=len(self._processors) * 2))
        for processor in self._processors:
            processor.task = asyncio.create_task(self._send_all(processor), name=f"payloads:{processor.url}")

    async def stop(self) -> None:
        for processor in self._processors:
            if processor.task is not None:
                processor.task.cancel()
        await asyncio.gather(*(p.task for p in self._processors if p.task is not None), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def offer(
        self, *, event_id: str, model: str, vmodel: str | None, method: str, protocol: str,
        request: bytes, response: bytes | None, status: str,
    ) -> None:
        """One request answered: its request and response events, queued (never awaited)."""
        if not self._processors or not model:
            return
        answered = _Answered(event_id, model, vmodel, method, protocol, request, response, status, now())
        for processor in self._processors:
            for kind in ("request", "response"):
                try:
                    processor.queue.put_nowait((kind, answered))
                except asyncio.QueueFull:
                    metrics.PAYLOAD_EVENTS.labels(processor.url, "dropped").inc()

    async def _send_all(self, processor: _Processor) -> None:
        assert self._client is not None
        warned = False
        while True:
            kind, answered = await processor.queue.get()
            event = answered.event(kind, self.source)  # built here, off the request path
            problem = ""
            try:
                reply = await self._client.post(processor.url, content=event.body, headers=event.headers)
                if reply.status_code >= 300:
                    problem = f"HTTP {reply.status_code}"
            except (httpx.HTTPError, OSError) as err:
                problem = f"{type(err).__name__}: {err}"
            metrics.PAYLOAD_EVENTS.labels(processor.url, "failed" if problem else "sent").inc()
            if problem and not warned:
                log.warning("payload processor %s: %s (logged once until it answers again)", processor.url, problem)
            warned = bool(problem)
            with contextlib.suppress(ValueError):
                processor.queue.task_done()
