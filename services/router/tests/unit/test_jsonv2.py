"""jsonv2.to_infer_request: a v2 JSON body -> ModelInferRequest, or JsonTensorError (the
REST door's 400) for any body that is not one; never another exception (a 500)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.router.jsonv2 import JsonTensorError, to_infer_request

GOOD = {"id": "1", "inputs": [{"name": "predict", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}],
        "outputs": [{"name": "predict"}]}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=6) | json_values,
        "datatype": st.sampled_from(["FP32", "INT64", "BOOL", "BYTES", "UINT8", "FP64", "INT8", "FP16"]) | json_values,
        "shape": st.lists(st.integers(-2, 2**63), max_size=3) | json_values,
        "data": json_values,
    },
)
bodies = st.fixed_dictionaries({}, optional={"inputs": st.lists(tensor, max_size=3) | json_values,
                                             "outputs": json_values, "id": json_values})


def test_a_good_body_converts() -> None:
    request = to_infer_request(json.dumps(GOOD).encode(), "m")
    assert request.model_name == "m" and list(request.inputs[0].contents.fp32_contents) == [1, 2, 3, 4]


@pytest.mark.parametrize("body", [b"", b"\x80", b"[]", b"{", b'{"inputs": 5}', b'{"inputs": [{"name": "x", "datatype": "UINT32", "shape": [1], "data": [-1]}]}',
                                  b'{"inputs": [], "outputs": true}'])  # outputs not a list: was a TypeError (a 500)
def test_bad_bodies_are_json_tensor_errors(body: bytes) -> None:
    with pytest.raises(JsonTensorError):
        to_infer_request(body, "m")


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(doc=bodies | json_values)
def test_any_json_body_converts_or_is_a_json_tensor_error(doc: Any) -> None:
    try:
        to_infer_request(json.dumps(doc).encode(), "m")
    except JsonTensorError as err:
        assert str(err)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(raw=st.binary(max_size=64))
def test_any_bytes_convert_or_are_a_json_tensor_error(raw: bytes) -> None:
    try:
        to_infer_request(raw, "m")
    except JsonTensorError:
        pass
