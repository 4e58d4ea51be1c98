"""Clients for the model servers behind the router, one per transport.

`GrpcUpstream` keeps one channel per model-server address and forwards raw bytes.
`RestUpstream` keeps one pooled keep-alive `httpx.AsyncClient` and forwards bodies
verbatim. Each turns "that copy is not there" into `CopyGone` (the data plane then
tries another copy) and anything else into the `MeshError` the client should see.

Owns: `GrpcUpstream`, `RestUpstream` (channels and the HTTP pool to the model servers), the
rules for "that copy is gone" (`copy_gone`, `raise_rest_error`).
May import: `meshserve.common`, the upstream errors; never the data plane, a door or the app.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import grpc
import httpx

from meshserve.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    MeshError,
    NotFound,
    from_grpc,
)
from meshserve.common.grpcutil import message_size_options, open_channel
from meshserve.common.settings import TLSSettings
from meshserve.router.upstream_errors import CopyGone, client_status, is_bad_input


class GrpcUpstream:
    """One kept-alive channel per model-server address."""

    def __init__(self, *, tls: TLSSettings, max_message_bytes: int) -> None:
        self.tls = tls
        self.max_message_bytes = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        """The kept-alive channel to `address` (opened on first use)."""
        channel = self._channels.get(address)
        if channel is None:
            channel = open_channel(address, tls=self.tls, options=message_size_options(self.max_message_bytes))
            self._channels[address] = channel
        return channel

    def callable(self, address: str, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        key = (address, method)
        callable_ = self._calls.get(key)
        if callable_ is None:
            callable_ = self._calls[key] = self.channel(address).unary_unary(method)
        return callable_

    def stream_callable(self, address: str, method: str) -> grpc.aio.StreamStreamMultiCallable:
        """Not cached: the router's other-RPC path forwards methods clients name, which
        must not grow a cache (only the channels, one per model server, are kept)."""
        return self.channel(address).stream_stream(method)

    async def send(
        self, address: str, method: str, payload: bytes, metadata: Sequence[tuple[str, str | bytes]], budget: float
    ) -> bytes:
        try:
            reply: bytes = await self.callable(address, method)(payload, metadata=metadata, timeout=budget)
            return reply
        except grpc.aio.AioRpcError as err:
            code, details = err.code(), err.details() or err.code().name
            if copy_gone(code, details):
                raise CopyGone(f"{code.name}: {details}") from err
            raise from_grpc(client_status(method, code, details), details) from err

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._calls.clear()


_VERSION_MISSING = re.compile(r"with version (\S+) not found")


def copy_gone(code: grpc.StatusCode, details: str) -> bool:
    """MLServer's words for "that model is not here" (ModelReady says UNKNOWN "Unexpected ModelNotFound").
    "Model m with version 1 not found" is not: the copy is there, the version the client asked for is
    not, so no other copy has it either and the client gets NOT_FOUND at once (as the REST door)."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    text = details.lower()
    if code == grpc.StatusCode.NOT_FOUND and "not found" in text and "model" in text:
        # MLServer says "with version  not found" (no version) for a model it does not hold
        return _VERSION_MISSING.search(text) is None
    return code == grpc.StatusCode.UNKNOWN and "modelnotfound" in text.replace(" ", "")


# -- REST ----------------------------------------------------------------------------------
REQUEST_HEADERS = ("content-type", "inference-header-content-length", "accept", "x-request-id")
RESPONSE_HEADERS = ("content-type", "inference-header-content-length", "x-request-id")


class RestReply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers


class RestUpstream:
    def __init__(self, *, tls: TLSSettings, max_connections: int = 512) -> None:
        verify: object = True
        cert: tuple[str, str] | None = None
        if tls.ca_file is not None:
            verify = str(tls.ca_file)
        if tls.cert_file is not None and tls.key_file is not None:
            cert = (str(tls.cert_file), str(tls.key_file))
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            verify=verify,  # type: ignore[arg-type]
            cert=cert,
            trust_env=False,
        )

    async def send(
        self, base: str, method: str, path: str, body: bytes, headers: dict[str, str], budget: float, *, infer: bool
    ) -> RestReply:
        try:
            response = await self.client.request(method, base + path, content=body, headers=headers, timeout=budget)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as err:
            raise CopyGone(f"{type(err).__name__}: {err}") from err
        except httpx.TimeoutException as err:
            raise DeadlineExceeded(f"the model server did not answer in time ({type(err).__name__})") from err
        status, content = response.status_code, response.content
        if status >= 400:
            raise_rest_error(status, content, infer=infer)
        return RestReply(status, content, {k: v for k in RESPONSE_HEADERS if (v := response.headers.get(k))})

    async def close(self) -> None:
        await self.client.aclose()


def error_text(content: bytes) -> str:
    """The model server's reason: `{"error": ...}` (MLServer) or FastAPI's `{"detail": ...}`."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return content.decode("utf-8", "replace")[:2000]
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            return str(body["error"])
        detail = body.get("detail")
        if isinstance(detail, list):
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg', '')}" if isinstance(d, dict) else str(d)
                for d in detail
            )
        if detail is not None:
            return str(detail)
    return content.decode("utf-8", "replace")[:2000]


class UpstreamFailed(MeshError):
    """The model server answered 5xx without saying why (MLServer does so for tensors a model rejects)."""

    http_status = 502


def raise_rest_error(status: int, content: bytes, *, infer: bool) -> None:
    text = error_text(content) or f"HTTP {status}"
    lowered = text.lower()
    if status == 404 and "not found" in lowered:
        if _VERSION_MISSING.search(lowered):
            raise NotFound(text)  # the model is there, the version the client asked for is not
        raise CopyGone(f"404: {text}")
    if status == 422:
        raise InvalidArgument(f"invalid inference request: {text}")
    if status == 400 or (status == 500 and infer and is_bad_input(text)):
        raise InvalidArgument(text)
    if status in (502, 503):
        raise CopyGone(f"{status}: {text}")
    if status >= 500:
        raise UpstreamFailed(f"the model server failed: {text}")
    err = MeshError(text)
    err.http_status = status
    raise err
