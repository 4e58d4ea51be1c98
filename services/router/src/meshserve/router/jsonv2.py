"""KServe v2 JSON inference request -> `ModelInferRequest` protobuf. PURE.

Used only on the REST error path: MLServer answers a REST infer whose tensors the
model cannot take with a bare "500 Internal Server Error". The router then replays
the request over gRPC to the same copy, where MLServer does send the reason, so the
REST client gets the same 400 + reason a gRPC client gets. A request that cannot even
be converted is a bad request by itself (`JsonTensorError`).
"""

from __future__ import annotations

import json
from typing import Any

from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2

_CONTENTS = {
    "BOOL": ("bool_contents", bool),
    "INT8": ("int_contents", int),
    "INT16": ("int_contents", int),
    "INT32": ("int_contents", int),
    "INT64": ("int64_contents", int),
    "UINT8": ("uint_contents", int),
    "UINT16": ("uint_contents", int),
    "UINT32": ("uint_contents", int),
    "UINT64": ("uint64_contents", int),
    "FP32": ("fp32_contents", float),
    "FP64": ("fp64_contents", float),
    "BYTES": ("bytes_contents", bytes),
}


class JsonTensorError(ValueError):
    """The JSON body is not a valid v2 inference request."""


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _typed(values: list[Any], kind: type, datatype: str, name: str) -> list[Any]:
    out = []
    for value in values:
        if kind is bytes:
            if not isinstance(value, str | bytes):
                raise JsonTensorError(f"input {name!r}: BYTES data must be strings, got {value!r}")
            out.append(value.encode() if isinstance(value, str) else value)
        elif kind is bool:
            if not isinstance(value, bool):
                raise JsonTensorError(f"input {name!r}: BOOL data must be true/false, got {value!r}")
            out.append(value)
        elif isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
            raise JsonTensorError(f"input {name!r}: {datatype} data must be numbers, got {value!r}")
        else:
            out.append(value)
    return out


def to_infer_request(body: bytes, model_name: str) -> v2.ModelInferRequest:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise JsonTensorError(f"the body is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise JsonTensorError("the body must be a JSON object with an 'inputs' list")
    request = v2.ModelInferRequest(model_name=model_name, id=str(doc.get("id") or ""))
    for index, item in enumerate(doc["inputs"]):
        if not isinstance(item, dict):
            raise JsonTensorError(f"inputs[{index}] must be an object")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise JsonTensorError(f"inputs[{index}] needs a string 'name' and 'datatype'")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise JsonTensorError(f"input {name!r}: 'shape' must be a list of non-negative integers")
        if datatype not in _CONTENTS:
            raise JsonTensorError(f"input {name!r}: unsupported datatype {datatype!r} in JSON")
        field, kind = _CONTENTS[datatype]
        values = _typed(_flatten(item.get("data", [])), kind, datatype, name)
        expected = 1
        for d in shape:
            expected *= d
        if len(values) != expected:
            raise JsonTensorError(f"input {name!r}: shape {shape} needs {expected} values, got {len(values)}")
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        try:
            getattr(tensor.contents, field).extend(values)
        except (TypeError, ValueError, OverflowError) as err:
            raise JsonTensorError(f"input {name!r}: {err}") from err
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise JsonTensorError("'outputs' must be a list of objects with a 'name'")
    for out in outputs:
        if isinstance(out, dict) and isinstance(out.get("name"), str):
            request.outputs.add(name=out["name"])
    return request
