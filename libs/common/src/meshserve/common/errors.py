"""One set of exceptions for every service, mapped once to gRPC status codes and HTTP codes.

Services raise these from their logic modules; the transport layer (a gRPC interceptor
or a FastAPI exception handler) turns them into the wire status with the message
intact. Messages are written for the user: say what was wrong and what to do.
"""

from __future__ import annotations

import grpc


class MeshError(Exception):
    """Base class; `code` is the gRPC status, `http_status` the REST equivalent."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(MeshError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(MeshError):
    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class FailedPrecondition(MeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 412


class ResourceExhausted(MeshError):
    """E.g. a model larger than any pod can hold."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 507


class Unavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class DeadlineExceeded(MeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Unauthenticated(MeshError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {
    cls.code: cls
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

_HTTP_BY_CODE: dict[grpc.StatusCode, int] = {
    **{code: cls.http_status for code, cls in _BY_CODE.items()},
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.ABORTED: 409,
}


def from_grpc(code: grpc.StatusCode, message: str) -> MeshError:
    """Rebuild the matching MeshError from a status received from another service."""
    cls = _BY_CODE.get(code, MeshError)
    err = cls(message)
    err.code = code
    return err


def http_status_for(code: grpc.StatusCode) -> int:
    return _HTTP_BY_CODE.get(code, 500)
