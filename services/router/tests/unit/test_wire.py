"""wire.py on real serialized KServe v2 requests, checked by protobuf's own parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.router import wire
from meshserve.router.wire import WireError


def infer_request(name: str = "mnist", **kwargs: object) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=name, model_version="1", id="req-1", **kwargs)  # type: ignore[arg-type]
    tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    request.raw_input_contents.append(b"\x00" * 16)
    request.parameters["priority"].int64_param = 3
    return request


def test_read_string_reads_model_name_of_infer_and_metadata_requests() -> None:
    assert wire.read_string(infer_request("iris").SerializeToString()) == "iris"
    assert wire.read_string(v2.ModelMetadataRequest(name="meta", version="2").SerializeToString()) == "meta"
    assert wire.read_string(v2.ModelReadyRequest(name="ready").SerializeToString()) == "ready"


def test_read_string_of_an_absent_field_is_empty() -> None:
    assert wire.read_string(v2.ModelInferRequest(id="x").SerializeToString()) == ""
    assert wire.read_string(b"") == ""


@pytest.mark.parametrize("new", [pytest.param("model__isvc-0123456789", id="longer"), pytest.param("m", id="shorter"), pytest.param("ünï", id="unicode")])
def test_replace_string_round_trips_through_protobuf(new: str) -> None:
    original = infer_request("mnist")
    rewritten = v2.ModelInferRequest.FromString(wire.replace_string(original.SerializeToString(), new))
    expected = v2.ModelInferRequest()
    expected.CopyFrom(original)
    expected.model_name = new
    assert rewritten == expected


def test_replace_string_of_metadata_request() -> None:
    raw = v2.ModelMetadataRequest(name="vm", version="3").SerializeToString()
    assert v2.ModelMetadataRequest.FromString(wire.replace_string(raw, "model-id")) == v2.ModelMetadataRequest(name="model-id", version="3")


def test_replace_string_adds_an_absent_field() -> None:
    raw = v2.ModelInferRequest(id="x").SerializeToString()
    assert v2.ModelInferRequest.FromString(wire.replace_string(raw, "added")) == v2.ModelInferRequest(id="x", model_name="added")
    assert wire.replace_string(b"", "only") == v2.ModelInferRequest(model_name="only").SerializeToString()


def test_repeated_field_reads_the_last_and_replace_keeps_one() -> None:
    # protobuf merges concatenated messages: the last model_name wins
    raw = infer_request("first").SerializeToString() + v2.ModelInferRequest(model_name="second").SerializeToString()
    assert wire.read_string(raw) == v2.ModelInferRequest.FromString(raw).model_name == "second"
    out = wire.replace_string(raw, "third")
    assert out.count(b"first") == 0 and out.count(b"second") == 0
    assert v2.ModelInferRequest.FromString(out).model_name == "third"


def test_replace_with_the_same_value_returns_the_buffer_unchanged() -> None:
    raw = infer_request("same").SerializeToString()
    assert wire.replace_string(raw, "same") is raw


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(infer_request().SerializeToString()[:-3], id="truncated-tail"),
        pytest.param(b"\x0a\x10abc", id="length-past-end"),
        pytest.param(b"\x0a", id="missing-length"),
        pytest.param(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", id="varint-too-long"),
        pytest.param(b"\x00\x01", id="field-zero"),
        pytest.param(b"\x0b\x0c", id="group-wire-type"),
        pytest.param(b"\x09\x01\x02", id="fixed64-truncated"),
        pytest.param(b"\x0a\x02\xff\xfe", id="invalid-utf8"),
    ],
)
def test_garbage_raises_wire_error(raw: bytes) -> None:
    with pytest.raises(WireError):
        wire.read_string(raw)
    if raw != b"\x0a\x02\xff\xfe":  # replace_string drops the bad value instead of decoding it
        with pytest.raises(WireError):
            wire.replace_string(raw, "x")


def test_field_one_with_a_non_string_wire_type_is_rejected_by_replace() -> None:
    with pytest.raises(WireError):
        wire.replace_string(b"\x08\x01", "x")  # field 1 as a varint


def test_encode_varint_matches_protobuf() -> None:
    for value in (0, 1, 127, 128, 300, 2**32, 2**63 - 1):
        encoded = wire.encode_varint(value)
        assert wire.read_varint(encoded, 0) == (value, len(encoded))


# -- property: any request message --------------------------------------------------------
names = st.text(max_size=40)
tensors = st.builds(
    lambda name, dtype, shape: v2.ModelInferRequest.InferInputTensor(name=name, datatype=dtype, shape=shape),
    names,
    st.sampled_from(["FP32", "INT64", "BYTES", "BOOL"]),
    st.lists(st.integers(min_value=-1, max_value=2**40), max_size=4),
)


@st.composite
def requests(draw: st.DrawFn) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(
        model_name=draw(names), model_version=draw(names), id=draw(names), inputs=draw(st.lists(tensors, max_size=3))
    )
    request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=300), max_size=3)))
    for key, value in draw(st.dictionaries(names, st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3)).items():
        request.parameters[key].int64_param = value
    for out in draw(st.lists(names, max_size=2)):
        request.outputs.add(name=out)
    return request


@settings(max_examples=300, deadline=None)
@given(request=requests(), new=names)
def test_replace_string_property(request: v2.ModelInferRequest, new: str) -> None:
    raw = request.SerializeToString()
    assert wire.read_string(raw) == request.model_name
    rewritten = v2.ModelInferRequest.FromString(wire.replace_string(raw, new))
    expected = v2.ModelInferRequest()
    expected.CopyFrom(request)
    expected.model_name = new
    assert rewritten == expected


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_wire_error(raw: bytes) -> None:
    for fn in (wire.read_string, lambda b: wire.replace_string(b, "x")):
        try:
            fn(raw)
        except WireError:
            pass


# -- raw_input_contents against the inputs (found by tests/fuzz: MLServer answered INTERNAL) -----
def _raw_request(*inputs: tuple[str, list[int], int]) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name="m")
    for datatype, shape, size in inputs:
        request.inputs.add(name="in", datatype=datatype, shape=shape)
        request.raw_input_contents.append(b"\x01" * size)
    return request


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        pytest.param(_raw_request(("FP32", [2, 4], 32), ("INT64", [3], 24), ("BYTES", [2], 5)), None, id="fits"),
        pytest.param(_raw_request(("FP32", [], 4)), None, id="scalar"),
        pytest.param(infer_request(), None, id="typed-contents-and-raw"),  # one raw entry of the right size
        pytest.param(_raw_request(("FP32", [2, 4], 6)), "needs 32 bytes of raw_input_contents, got 6", id="short"),
        pytest.param(_raw_request(("FP64", [2**62, 4], 8)), "needs 147573952589676412928 bytes", id="huge-shape"),
        pytest.param(_raw_request(("INT8", [-1, 4], 4)), "negative dimension", id="negative-shape"),
    ],
)
def test_raw_inputs_problem(request_: v2.ModelInferRequest, problem: str | None) -> None:
    found = wire.raw_inputs_problem(request_.SerializeToString())
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


def test_raw_entries_must_match_the_inputs_one_to_one() -> None:
    request = _raw_request(("FP32", [1, 4], 16))
    request.inputs.add(name="extra", datatype="INT64", shape=[1])
    found = wire.raw_inputs_problem(request.SerializeToString())
    assert found is not None and "2 input(s) and 1 raw_input_contents entries" in found
    assert wire.raw_inputs_problem(v2.ModelInferRequest(inputs=request.inputs).SerializeToString()) is None


def test_unpacked_shapes_are_read_too() -> None:
    # shape written as unpacked varints (valid protobuf, as some encoders do)
    tensor = b"\x0a\x02in" + b"\x12\x04FP32" + b"\x18\x02\x18\x04"
    raw = b"\x2a" + bytes([len(tensor)]) + tensor + b"\x3a\x06" + b"\x00" * 6
    found = wire.raw_inputs_problem(raw)
    assert found is not None and "shape [2, 4] of FP32 needs 32 bytes" in found


@settings(max_examples=300, deadline=None)
@given(request=requests())
def test_raw_inputs_problem_agrees_with_the_sizes(request: v2.ModelInferRequest) -> None:
    found = wire.raw_inputs_problem(request.SerializeToString())
    raw = list(request.raw_input_contents)
    if not raw:
        assert found is None
        return
    if len(raw) != len(request.inputs):
        assert found is not None and "raw_input_contents entries" in found
        return
    expected_ok = True
    for tensor, content in zip(request.inputs, raw, strict=True):
        size = wire.RAW_ELEMENT_BYTES.get(tensor.datatype)
        if size is None:
            continue
        count = 1
        for d in tensor.shape:
            count *= d
        if any(d < 0 for d in tensor.shape) or count * size != len(content):
            expected_ok = False
            break
    assert (found is None) == expected_ok, found


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_raw_inputs_problem_of_arbitrary_bytes_raises_only_wire_error(raw: bytes) -> None:
    try:
        wire.raw_inputs_problem(raw)
    except WireError:
        pass
