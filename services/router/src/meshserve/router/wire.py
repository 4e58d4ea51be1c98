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


# -- raw_input_contents against the inputs they belong to ---------------------------------------
RAW_ELEMENT_BYTES = {
    "BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
    "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8,
}
"""Bytes per element of the fixed-size KServe v2 datatypes (BYTES is length-prefixed)."""
_INPUTS, _RAW = 5, 7  # ModelInferRequest.inputs, .raw_input_contents
_TENSOR_NAME, _TENSOR_DATATYPE, _TENSOR_SHAPE = 1, 2, 3


def _fields(buf: bytes | memoryview, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(number, wire type, start of value, end of value) of each field in buf[start:end];
    a varint's value spans its bytes, a length-delimited one its payload."""
    out = []
    pos = start
    while pos < end:
        tag, pos = read_varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == LEN:
            length, body = read_varint(buf, pos, end)
            pos = body + length
            if pos > end:
                raise WireError("truncated field")
            out.append((number, wire_type, body, pos))
            continue
        value_start = pos
        pos = _skip(buf, pos, wire_type)
        if pos > end:
            raise WireError("truncated field")
        out.append((number, wire_type, value_start, pos))
    return out


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _tensor_head(buf: memoryview, start: int, end: int) -> tuple[str, str, list[int]]:
    """(name, datatype, shape) of the InferInputTensor in buf[start:end]; its contents are skipped."""
    name = datatype = ""
    shape: list[int] = []
    for number, wire_type, s, e in _fields(buf, start, end):
        if number in (_TENSOR_NAME, _TENSOR_DATATYPE) and wire_type == LEN:
            text = bytes(buf[s:e]).decode("utf-8", "replace")
            name, datatype = (text, datatype) if number == _TENSOR_NAME else (name, text)
        elif number == _TENSOR_SHAPE and wire_type == VARINT:
            shape.append(_int64(read_varint(buf, s, e)[0]))
        elif number == _TENSOR_SHAPE and wire_type == LEN:  # packed
            pos = s
            while pos < e:
                value, pos = read_varint(buf, pos, e)
                shape.append(_int64(value))
    return name, datatype, shape


def raw_inputs_problem(buf: bytes) -> str | None:
    """Why the `raw_input_contents` of a serialized ModelInferRequest cannot be its inputs'
    data, or None (none sent, or every fixed-size input gets exactly shape x element size
    bytes). The KServe v2 protocol: when raw contents are used there is one entry per input,
    in order. Only the inputs' names, datatypes and shapes are read; the data is not.
    Raises WireError for bytes that are not a protobuf message."""
    view = memoryview(buf)
    inputs: list[tuple[int, int]] = []
    raw: list[int] = []
    for number, wire_type, s, e in _fields(view, 0, len(buf)):
        if number == _INPUTS and wire_type == LEN:
            inputs.append((s, e))
        elif number == _RAW and wire_type == LEN:
            raw.append(e - s)
    if not raw:
        return None
    if len(raw) != len(inputs):
        return (
            f"the request has {len(inputs)} input(s) and {len(raw)} raw_input_contents entries: send one raw "
            "entry per input, in the same order (or none, with the data in each input's contents)"
        )
    for (s, e), size in zip(inputs, raw, strict=True):
        name, datatype, shape = _tensor_head(view, s, e)
        element = RAW_ELEMENT_BYTES.get(datatype)
        if element is None:
            continue  # BYTES (length-prefixed) or a datatype the model server will name
        if any(d < 0 for d in shape):
            return f"input {name[:100]!r}: shape {shape} has a negative dimension"
        count = 1
        for d in shape:
            count *= d
        if count * element != size:
            return (
                f"input {name[:100]!r}: shape {shape} of {datatype} needs {count * element} bytes of "
                f"raw_input_contents, got {size}"
            )
    return None
