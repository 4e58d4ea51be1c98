"""Read and rewrite one string field at a field-number path in serialized protobuf bytes,
without a schema. PURE: bytes in, bytes out, no I/O.

ModelMesh forwards gRPC methods it has no schema for. For the methods it knows, it names
the model inside the request by an "id path": the field numbers from the top message down
to a string field, e.g. `[1, 1]` for TF Serving's `PredictRequest.model_spec.name` or `[1]`
for KServe v2's `ModelInferRequest.model_name` (upstream `ProtoSplicer.java`). This module
is that splicer for the router:

- `read_path(buf, path)`: the string at `path` as protobuf would parse it: a message field
  that occurs several times is one merged message, and the last occurrence of the string
  wins. None when the string (or a message on the way) is absent.
- `inject(buf, path, value)`: `buf` with the string at `path` set to `value`. Every
  occurrence of every message on the path is rewritten (so a singular message split over
  several occurrences, which protobuf merges, reads `value`); inside each, the first
  occurrence of the string is replaced in place and later ones are dropped; a message
  without the string gets it appended; a missing message on the path is created, with
  the string inside, at the end of its parent. When the string already is `value`, once,
  everywhere, the input object itself is returned.

Invariants (what the tests check): the result parses, with the real schema, as the input
with the field set to `value` (for singular fields on the path; a repeated message there
has every element rewritten); every other field, known or unknown, keeps its bytes and
its order; besides the string itself, only the length prefixes of the messages on the
path change. Only the levels on the path are walked: any other length-delimited field (a
tensor) is skipped by its length and never decoded, so the cost does not depend on what a
request carries. `read_path` checks only the occurrence it returns for UTF-8.

Malformed input raises `WireError` (a `ValueError`; the router answers INVALID_ARGUMENT),
never an IndexError: a truncated varint, tag or field; a length past the end of its
message; field number 0; wire types 6 and 7; an unbalanced group; a field on the path
whose wire type is not length-delimited (it cannot be a message or a string there).
Groups (wire types 3 and 4, proto2) are skipped like any other field.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

from meshserve.router.wire import (
    EGROUP,
    I32,
    I64,
    LEN,
    SGROUP,
    VARINT,
    WireError,
    encode_varint,
    read_varint,
)

MAX_FIELD_NUMBER = (1 << 29) - 1
MAX_PATH_LENGTH = 32
"""Far deeper than any request schema nests the model name; keeps the recursion bounded."""
_MAX_GROUP_DEPTH = 100  # protobuf's own default recursion limit
_WIRE_TYPE_NAMES = {VARINT: "varint", I64: "fixed64", LEN: "length-delimited", SGROUP: "start-group",
                    EGROUP: "end-group", I32: "fixed32"}

Chunk = bytes | memoryview


class _Field(NamedTuple):
    number: int
    wire_type: int
    start: int        # first byte of the tag
    value_start: int  # first byte after the tag (the length prefix, for LEN)
    body_start: int   # first byte of the content (after the length prefix, for LEN)
    end: int          # one past the last byte of the field


def check_path(path: Sequence[int]) -> tuple[int, ...]:
    """`path` as a tuple, if it is one: 1 to MAX_PATH_LENGTH valid field numbers."""
    if not path:
        raise ValueError("an id path needs at least one field number")
    if len(path) > MAX_PATH_LENGTH:
        raise ValueError(f"an id path has at most {MAX_PATH_LENGTH} field numbers, not {len(path)}")
    for number in path:
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_FIELD_NUMBER:
            raise ValueError(f"{number!r} is not a protobuf field number (1..{MAX_FIELD_NUMBER})")
    return tuple(path)


def read_path(buf: bytes, path: Sequence[int]) -> str | None:
    """The string at `path` in the message `buf`, as protobuf parses it; None if absent.

    Raises:
        WireError: `buf` is malformed on the path, a field on the path is not
            length-delimited, or the string is not UTF-8.
    """
    full = check_path(path)
    view = memoryview(buf)
    found = _read(view, 0, len(view), full, 0)
    if found is None:
        return None
    try:
        return bytes(found).decode("utf-8")
    except UnicodeDecodeError as err:
        raise WireError(f"the string at field path {list(full)} is not valid UTF-8") from err


def inject(buf: bytes, path: Sequence[int], value: str) -> bytes:
    """`buf` with the string at `path` set to `value` (see the module docstring).

    Raises:
        WireError: `buf` is malformed on the path, or a field on the path is not
            length-delimited.
    """
    full = check_path(path)
    encoded = value.encode("utf-8")
    view = memoryview(buf)
    parts, changed = _splice(view, 0, len(view), full, 0, encoded)
    if not changed:
        return buf
    return b"".join(parts)


# -- walking ------------------------------------------------------------------------------
def _tag(view: memoryview, pos: int, end: int) -> tuple[int, int, int]:
    tag, after = read_varint(view, pos, end)
    number, wire_type = tag >> 3, tag & 7
    if number == 0:
        raise WireError(f"field number 0 at byte {pos}")
    if number > MAX_FIELD_NUMBER:
        raise WireError(f"field number {number} at byte {pos} is out of range")
    if wire_type > I32:
        raise WireError(f"invalid wire type {wire_type} at byte {pos}")
    return number, wire_type, after


def _skip_group(view: memoryview, pos: int, end: int, number: int, depth: int) -> int:
    """Past the END_GROUP that closes group `number`, whose content starts at `pos`."""
    if depth > _MAX_GROUP_DEPTH:
        raise WireError("groups nested too deeply")
    while True:
        if pos >= end:
            raise WireError(f"group {number} is not closed")
        inner, wire_type, pos = _tag(view, pos, end)
        if wire_type == EGROUP:
            if inner != number:
                raise WireError(f"group {number} closed by an end-group of field {inner}")
            return pos
        pos = _skip_value(view, pos, end, inner, wire_type, depth + 1)


def _skip_value(view: memoryview, pos: int, end: int, number: int, wire_type: int, depth: int) -> int:
    if wire_type == VARINT:
        return read_varint(view, pos, end)[1]
    if wire_type == LEN:
        length, pos = read_varint(view, pos, end)
        stop = pos + length
    elif wire_type == I64:
        stop = pos + 8
    elif wire_type == I32:
        stop = pos + 4
    elif wire_type == SGROUP:
        return _skip_group(view, pos, end, number, depth)
    else:  # EGROUP without a group
        raise WireError(f"end-group of field {number} outside a group")
    if stop > end:
        raise WireError(f"field {number} runs past the end of its message")
    return stop


def _fields(view: memoryview, start: int, end: int) -> Iterator[_Field]:
    pos = start
    while pos < end:
        number, wire_type, after = _tag(view, pos, end)
        if wire_type == LEN:
            length, body = read_varint(view, after, end)
            stop = body + length
            if stop > end:
                raise WireError(f"field {number} runs past the end of its message")
        else:
            body = after
            stop = _skip_value(view, after, end, number, wire_type, 0)
        yield _Field(number, wire_type, pos, after, body, stop)
        pos = stop


def _check_len(field: _Field, path: tuple[int, ...], depth: int) -> None:
    if field.wire_type != LEN:
        kind = "string" if depth == len(path) - 1 else "message"
        raise WireError(
            f"field {field.number} (element {depth + 1} of field path {list(path)}) has wire type "
            f"{_WIRE_TYPE_NAMES[field.wire_type]}; a {kind} there must be length-delimited"
        )


def _read(view: memoryview, start: int, end: int, path: tuple[int, ...], depth: int) -> memoryview | None:
    number, leaf = path[depth], depth == len(path) - 1
    found: memoryview | None = None
    for field in _fields(view, start, end):
        if field.number != number:
            continue
        _check_len(field, path, depth)
        if leaf:
            found = view[field.body_start:field.end]
        else:
            inner = _read(view, field.body_start, field.end, path, depth + 1)
            if inner is not None:
                found = inner  # merged messages: a later occurrence's string wins
    return found


def _encoded_field(number: int, payload: Chunk) -> bytes:
    return encode_varint((number << 3) | LEN) + encode_varint(len(payload)) + bytes(payload)


def _created(path: tuple[int, ...], depth: int, encoded: bytes) -> bytes:
    """The fields path[depth:] as new bytes: messages wrapping the string."""
    payload = encoded
    for number in reversed(path[depth + 1:]):
        payload = _encoded_field(number, payload)
    return _encoded_field(path[depth], payload)


def _splice(
    view: memoryview, start: int, end: int, path: tuple[int, ...], depth: int, encoded: bytes
) -> tuple[list[Chunk], bool]:
    """The message view[start:end] rewritten as chunks, and whether anything changed."""
    number, leaf = path[depth], depth == len(path) - 1
    parts: list[Chunk] = []
    last = start     # first byte not yet copied into parts
    found = changed = False
    for field in _fields(view, start, end):
        if field.number != number:
            continue
        _check_len(field, path, depth)
        parts.append(view[last:field.start])
        last = field.end
        if leaf:
            if found:  # a later occurrence would win over ours: drop it
                changed = True
                continue
            found = True
            if view[field.body_start:field.end] != encoded:
                changed = True
            # keep the tag's own bytes (a non-minimal varint stays as it was)
            parts += (view[field.start:field.value_start], encode_varint(len(encoded)), encoded)
        else:
            found = True
            inner, inner_changed = _splice(view, field.body_start, field.end, path, depth + 1, encoded)
            if not inner_changed:
                parts.append(view[field.start:field.end])
                continue
            changed = True
            length = sum(len(chunk) for chunk in inner)
            parts += (view[field.start:field.value_start], encode_varint(length))
            parts += inner
    parts.append(view[last:end])
    if not found:
        parts.append(_created(path, depth, encoded))
        changed = True
    return parts, changed
