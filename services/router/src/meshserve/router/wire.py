"""Protobuf wire-format surgery on serialized requests, without decoding tensors.

The router must read and rewrite one top-level string field (field 1: `model_name` of
ModelInferRequest, `name` of ModelMetadataRequest / ModelReadyRequest) while the
tensors stay opaque bytes. Only the top-level tags are walked; a length-delimited
field is skipped by its length prefix, so the cost does not depend on tensor contents.

PURE: bytes in, bytes out. Malformed input raises `WireError` (never an IndexError).
"""

from __future__ import annotations

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


class WireError(ValueError):
    """The bytes are not a valid protobuf message."""


def read_varint(buf: bytes | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`, which must end before `end`
    (default: the end of `buf`)."""
    result = shift = 0
    end = len(buf) if end is None else end
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _skip(buf: bytes | memoryview, pos: int, wire_type: int) -> int:
    if wire_type == VARINT:
        return read_varint(buf, pos)[1]
    if wire_type == I64:
        end = pos + 8
    elif wire_type == I32:
        end = pos + 4
    elif wire_type == LEN:
        length, pos = read_varint(buf, pos)
        end = pos + length
    else:
        raise WireError(f"unsupported wire type {wire_type}")
    if end > len(buf):
        raise WireError("truncated field")
    return end


def read_string(buf: bytes, field: int = 1) -> str:
    """The last value of top-level string `field` ("" if absent), as protobuf would parse it."""
    view = memoryview(buf)
    pos, end, value = 0, len(buf), ""
    while pos < end:
        tag, pos = read_varint(view, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0")
        if number == field and wire_type == LEN:
            length, start = read_varint(view, pos)
            pos = start + length
            if pos > end:
                raise WireError("truncated field")
            try:
                value = bytes(view[start:pos]).decode("utf-8")
            except UnicodeDecodeError as err:
                raise WireError("field is not valid UTF-8") from err
        else:
            pos = _skip(view, pos, wire_type)
    return value


def replace_string(buf: bytes, value: str, field: int = 1) -> bytes:
    """`buf` with every occurrence of top-level `field` removed and `field = value` first.

    Other fields are copied as byte slices (tensors are never decoded). If the field is
    already `value` and appears once, `buf` is returned unchanged (no copy).
    """
    view = memoryview(buf)
    pos, end = 0, len(buf)
    spans: list[tuple[int, int]] = []   # (start, end) of the field's occurrences
    current: list[str] = []
    while pos < end:
        start = pos
        tag, pos = read_varint(view, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0")
        pos = _skip(view, pos, wire_type)
        if number == field:
            if wire_type != LEN:
                raise WireError(f"field {field} has wire type {wire_type}, expected a string")
            spans.append((start, pos))
            if len(spans) == 1:
                _, body = read_varint(view, start + len(encode_varint(tag)))
                current.append(bytes(view[body:pos]).decode("utf-8", "replace"))
    encoded = value.encode("utf-8")
    if len(spans) == 1 and current and current[0] == value:
        return buf
    head = encode_varint((field << 3) | LEN) + encode_varint(len(encoded)) + encoded
    if not spans:
        return head + buf
    parts = [head]
    last = 0
    for s, e in spans:
        parts.append(bytes(view[last:s]))
        last = e
    parts.append(bytes(view[last:]))
    return b"".join(parts)
