"""Hypothesis strategies that mutate the seed corpus in `corpus/` (shared by the fuzz suites).

Three layers, so both shallow and deep parts of a parser are reached:
- `mutated_bytes(seeds)`: byte-level edits of a seed (flip, insert, delete, truncate, duplicate
  a slice, splice two seeds, overwrite with a varint), the classic corpus fuzzer moves;
- `infer_requests(name)`: ModelInferRequest messages built field by field, with the shapes,
  datatypes, raw contents and names a client gets wrong (huge and negative dimensions, unknown
  datatypes, raw contents that do not match the shape, 10 KB or empty names);
- `mutated_json(seeds)`: a seed document with subtrees replaced, removed or retyped.

Everything is deterministic under `derandomize=True`: the corpus is read in sorted order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from hypothesis import strategies as st

from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2

CORPUS = Path(__file__).resolve().parent / "corpus"
MODEL = "fuzz-iris"
"""The model every seed names (the fuzz stack registers it)."""

DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16")
INT64_EDGES = (0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63))


def grpc_seeds() -> list[bytes]:
    """The serialized ModelInferRequests of corpus/grpc/*.txtpb, sorted by file name."""
    out = []
    for path in sorted((CORPUS / "grpc").glob("*.txtpb")):
        out.append(text_format.Parse(path.read_text(), v2.ModelInferRequest()).SerializeToString())
    return out


def rest_seeds() -> list[Any]:
    """The JSON documents of corpus/rest/*.json, sorted by file name."""
    return [json.loads(path.read_text()) for path in sorted((CORPUS / "rest").glob("*.json"))]


# -- bytes ---------------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@st.composite
def _edit(draw: st.DrawFn, buf: bytes, seeds: list[bytes]) -> bytes:
    kind = draw(st.sampled_from(("flip", "insert", "delete", "truncate", "duplicate", "splice", "varint", "byte")))
    n = len(buf)
    at = draw(st.integers(0, n))
    if kind == "flip" and n:
        i = min(at, n - 1)
        return buf[:i] + bytes([buf[i] ^ (1 << draw(st.integers(0, 7)))]) + buf[i + 1:]
    if kind == "byte" and n:
        i = min(at, n - 1)
        return buf[:i] + bytes([draw(st.sampled_from((0x00, 0x0A, 0x12, 0x7F, 0x80, 0xFF)))]) + buf[i + 1:]
    if kind == "insert":
        return buf[:at] + draw(st.binary(min_size=1, max_size=16)) + buf[at:]
    if kind == "delete":
        return buf[:at] + buf[at + draw(st.integers(1, 8)):]
    if kind == "truncate":
        return buf[:at]
    if kind == "duplicate":
        end = draw(st.integers(at, n))
        return buf[:end] + buf[at:end] + buf[end:]
    if kind == "splice":
        other = draw(st.sampled_from(seeds))
        cut = draw(st.integers(0, len(other)))
        return buf[:at] + other[cut:]
    if kind == "varint":  # a tag or length overwritten by an extreme varint
        value = draw(st.sampled_from(INT64_EDGES) | st.integers(0, 2**64 - 1))
        return buf[:at] + _varint(value) + buf[at + 1:]
    return buf


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: list[bytes], *, max_edits: int = 4) -> bytes:
    """A seed with 0..max_edits byte-level edits."""
    buf = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, max_edits))):
        buf = draw(_edit(buf, seeds))
    return buf


# -- structured ModelInferRequests ------------------------------------------------------------------

def names(model: str) -> st.SearchStrategy[str]:
    """Model names a client may send: the real one, empty, unknown, odd characters, 10 KB."""
    return st.one_of(
        st.just(model),
        st.just(""),
        st.just("x" * 10_240),
        st.just(model + "\x00"),
        st.just("../" + model),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=600),
    )


@st.composite
def _tensor(draw: st.DrawFn, request: v2.ModelInferRequest) -> bytes | None:
    """Add one input to `request`; return raw bytes for it (or None: typed contents / nothing)."""
    datatype = draw(st.sampled_from(DATATYPES) | st.text(max_size=12))
    shape = draw(st.lists(st.sampled_from(INT64_EDGES) | st.integers(-4, 16), max_size=5))
    tensor = request.inputs.add(name=draw(st.sampled_from(("predict", "", "other")) | st.text(max_size=8)),
                                datatype=datatype, shape=shape)
    how = draw(st.sampled_from(("raw", "fp32", "int64", "bytes", "bool", "none")))
    count = draw(st.integers(0, 12))
    if how == "fp32":
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), min_size=count, max_size=count)))
    elif how == "int64":
        tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=count)))
    elif how == "bytes":
        tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=count)))
    elif how == "bool":
        tensor.contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=count)))
    elif how == "raw":
        return draw(st.binary(max_size=64) | st.just(b"\x00\x00\x80?" * 8))
    return None


@st.composite
def infer_requests(draw: st.DrawFn, model: str = MODEL) -> bytes:
    """A serialized ModelInferRequest with client mistakes in its fields (or none)."""
    request = v2.ModelInferRequest(model_name=draw(names(model)), id=draw(st.text(max_size=8)))
    raws = [draw(_tensor(request)) for _ in range(draw(st.integers(0, 3)))]
    if any(r is not None for r in raws):
        # mismatched on purpose sometimes: fewer or more raw entries than inputs
        raw = [r if r is not None else b"" for r in raws]
        request.raw_input_contents.extend(draw(st.sampled_from((raw, raw[:-1], [*raw, b"\x01"]))))
    for out in draw(st.lists(st.text(max_size=8), max_size=2)):
        request.outputs.add(name=out)
    if draw(st.booleans()):
        param = request.parameters[draw(st.text(max_size=8))]
        choice = draw(st.integers(0, 2))
        if choice == 0:
            param.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        elif choice == 1:
            param.string_param = draw(st.text(max_size=16))
        else:
            param.bool_param = draw(st.booleans())
    return request.SerializeToString()


# -- JSON ------------------------------------------------------------------------------------------

JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from((2**63 - 1, -1, 1e308, "", "FP32", "BYTES", "predict")),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any, *, delete: bool) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        copy = dict(doc)
        if delete and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _replace(doc[head], rest, value, delete=delete)
        return copy
    copy_list = list(doc)
    if delete and not rest:
        del copy_list[head]
    else:
        copy_list[head] = _replace(doc[head], rest, value, delete=delete)
    return copy_list


@st.composite
def mutated_document(draw: st.DrawFn, seeds: list[Any], *, max_edits: int = 3, values: st.SearchStrategy[Any] = JSON_VALUES) -> Any:
    """A seed document with 0..max_edits subtrees replaced by other values or deleted."""
    doc = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, max_edits))):
        path = draw(st.sampled_from(_paths(doc)))
        delete = bool(path) and draw(st.booleans())
        doc = _replace(doc, path, None if delete else draw(values), delete=delete)
    return doc


@st.composite
def mutated_json(draw: st.DrawFn, seeds: list[Any]) -> bytes:
    """A request body: a mutated seed document, serialized, sometimes edited as bytes too."""
    body = json.dumps(draw(mutated_document(seeds))).encode()
    if draw(st.integers(0, 3)) == 0:
        body = draw(mutated_bytes([body], max_edits=2))
    return body
