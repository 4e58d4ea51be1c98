"""One set of exceptions for every service, mapped once to gRPC status codes and HTTP codes.

Services raise these from their logic modules; the transport layer (a gRPC interceptor
or a FastAPI exception handler) turns them into the wire status with the message
intact. Messages are written for the user: say what was wrong and what to do.

Pure: no gRPC here (logic modules that raise these stay free of I/O libraries). A status is
named as gRPC names it (`status = "NOT_FOUND"`); `meshserve.common.grpcutil.grpc_code`
turns it into a `grpc.StatusCode` at the transport.
"""

from __future__ import annotations

from typing import Protocol


class _Named(Protocol):
    """A gRPC status code (`grpc.StatusCode.X`), or anything else with its name."""

    @property
    def name(self) -> str: ...


class MeshError(Exception):
    """Base class; `status` is the gRPC status's name, `http_status` the REST equivalent."""

    status: str = "INTERNAL"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MeshError):
    status = "INVALID_ARGUMENT"
    http_status = 400


class NotFound(MeshError):
    status = "NOT_FOUND"
    http_status = 404


class AlreadyExists(MeshError):
    status = "ALREADY_EXISTS"
    http_status = 409


class FailedPrecondition(MeshError):
    status = "FAILED_PRECONDITION"
    http_status = 412


class ResourceExhausted(MeshError):
    """E.g. a model larger than any pod can hold."""

    status = "RESOURCE_EXHAUSTED"
    http_status = 507


class Unavailable(MeshError):
    status = "UNAVAILABLE"
    http_status = 503


class DeadlineExceeded(MeshError):
    status = "DEADLINE_EXCEEDED"
    http_status = 504


class Unauthenticated(MeshError):
    status = "UNAUTHENTICATED"
    http_status = 401


_BY_STATUS: dict[str, type[MeshError]] = {
    cls.status: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
    )
}

_HTTP_BY_STATUS: dict[str, int] = {
    **{status: cls.http_status for status, cls in _BY_STATUS.items()},
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "PERMISSION_DENIED": 403,
    "OUT_OF_RANGE": 400,
    "ABORTED": 409,
}


def from_grpc(code: _Named, message: str) -> MeshError:
    """Rebuild the matching MeshError from a status (`grpc.StatusCode`) received from another service."""
    cls = _BY_STATUS.get(code.name, MeshError)
    err = cls(message)
    err.status = code.name
    return err


def http_status_for(code: _Named | str) -> int:
    """The HTTP code for a gRPC status (`grpc.StatusCode` or its name)."""
    return _HTTP_BY_STATUS.get(code if isinstance(code, str) else code.name, 500)
