"""Mapping a model server's error status to the status the client should see. PURE.

MLServer (1.7) answers a request whose tensors do not fit the model (wrong number of
features, a shape that does not match the data, a datatype it cannot decode) with
INTERNAL and the Python exception's text. For the client that is a bad request, so
an INTERNAL reply to ModelInfer (or ModelStreamInfer) whose text matches one of MLServer's input-decoding or
input-validation messages becomes INVALID_ARGUMENT, with the model server's reason
kept verbatim. A request whose tensors are not valid protobuf (the router reads only
the top-level fields, so a broken nested message reaches the model server) is answered
by grpc's Python server with UNKNOWN "Unexpected <class 'DecodeError'>: Error parsing
message" (INTERNAL "Error parsing message ..." on a stream): that is INVALID_ARGUMENT too,
for any model method. Anything else passes
through unchanged. The REST transport asks `is_bad_input` about an HTTP 500 in the same way.

Owns: `CopyGone` (the chosen copy is not there: the data plane tries another), the
model-server-status-to-client-status rules (`client_status`, `is_bad_input`).
May import: grpc (its status codes only) and the standard library.
"""

from __future__ import annotations

import re

import grpc


class CopyGone(Exception):
    """The chosen copy is not there any more (pod down, model unloaded): try another."""


_BAD_INPUT = re.compile(
    r"(features, but .* is expecting"
    r"|cannot reshape array"
    r"|unpack requires a buffer of"  # struct.error: raw_input_contents shorter than shape x datatype
    r"|buffer size must be a multiple"
    r"|could not convert"
    r"|invalid literal for"
    r"|unsupported (data)?type"
    r"|datatype"
    r"|dtype"
    r"|shape mismatch|incompatible shape|expected shape|wrong shape"
    r"|builtins\.(ValueError|TypeError)"
    r"|is not a valid (input|tensor))",
    re.IGNORECASE,
)


def is_bad_input(details: str) -> bool:
    """Whether a model server's error text describes a request the model cannot take."""
    return bool(details) and _BAD_INPUT.search(details) is not None


_UNDECODABLE = re.compile(r"DecodeError|Error parsing message")


def client_status(method: str, code: grpc.StatusCode, details: str) -> grpc.StatusCode:
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) and details and _UNDECODABLE.search(details):
        return grpc.StatusCode.INVALID_ARGUMENT
    if code == grpc.StatusCode.INTERNAL and method.endswith(("/ModelInfer", "/ModelStreamInfer")) and is_bad_input(details):
        return grpc.StatusCode.INVALID_ARGUMENT
    return code
