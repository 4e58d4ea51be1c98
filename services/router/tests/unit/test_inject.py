"""inject.py against real generated messages, checked by protobuf's own parser.

Schemas: the KServe v2 `ModelInferRequest` (path [1]), and message types built at test time
from descriptors: one shaped like TF Serving's `PredictRequest` (path [1, 1], with fields of
every wire type beside it), TorchServe's `PredictionsRequest` (path [1]) and a three-level
message (path [1, 2, 3]). "Equal" below means equal deterministic serializations, which is
stricter than `==`: unknown fields must be there, in their order.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.router import inject
from meshserve.router.wire import WireError, encode_varint

F = descriptor_pb2.FieldDescriptorProto


# -- message types built from descriptors ---------------------------------------------------
def _field(message: Any, name: str, number: int, kind: int, *, repeated: bool = False, type_name: str = "") -> None:
    field = message.field.add(name=name, number=number, type=kind)
    field.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
    if type_name:
        field.type_name = type_name


def _build_types() -> dict[str, type[Message]]:
    file = descriptor_pb2.FileDescriptorProto(name="meshserve_inject_test.proto", package="injtest", syntax="proto3")
    version = file.message_type.add(name="Int64Value")
    _field(version, "value", 1, F.TYPE_INT64)
    spec = file.message_type.add(name="ModelSpec")
    _field(spec, "name", 1, F.TYPE_STRING)
    _field(spec, "version", 2, F.TYPE_MESSAGE, type_name=".injtest.Int64Value")
    _field(spec, "signature_name", 3, F.TYPE_STRING)
    tensor = file.message_type.add(name="TensorProto")
    _field(tensor, "dtype", 1, F.TYPE_INT32)
    _field(tensor, "tensor_content", 4, F.TYPE_BYTES)
    _field(tensor, "float_val", 5, F.TYPE_FLOAT, repeated=True)  # packed (proto3)
    _field(tensor, "int64_val", 10, F.TYPE_INT64, repeated=True)
    predict = file.message_type.add(name="PredictRequest")
    _field(predict, "model_spec", 1, F.TYPE_MESSAGE, type_name=".injtest.ModelSpec")
    entry = predict.nested_type.add(name="InputsEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_MESSAGE, type_name=".injtest.TensorProto")
    _field(predict, "inputs", 2, F.TYPE_MESSAGE, repeated=True, type_name=".injtest.PredictRequest.InputsEntry")
    _field(predict, "output_filter", 3, F.TYPE_STRING, repeated=True)
    _field(predict, "f64", 4, F.TYPE_FIXED64)
    _field(predict, "f32", 5, F.TYPE_SFIXED32)
    _field(predict, "d", 6, F.TYPE_DOUBLE)
    _field(predict, "s", 7, F.TYPE_SINT64)
    _field(predict, "b", 8, F.TYPE_BOOL)
    torch = file.message_type.add(name="PredictionsRequest")
    _field(torch, "model_name", 1, F.TYPE_STRING)
    _field(torch, "model_version", 2, F.TYPE_STRING)
    tentry = torch.nested_type.add(name="InputEntry")
    tentry.options.map_entry = True
    _field(tentry, "key", 1, F.TYPE_STRING)
    _field(tentry, "value", 2, F.TYPE_BYTES)
    _field(torch, "input", 3, F.TYPE_MESSAGE, repeated=True, type_name=".injtest.PredictionsRequest.InputEntry")
    l3 = file.message_type.add(name="L3")
    _field(l3, "n", 1, F.TYPE_INT32)
    _field(l3, "id", 3, F.TYPE_STRING)
    l2 = file.message_type.add(name="L2")
    _field(l2, "blob", 1, F.TYPE_BYTES)
    _field(l2, "c", 2, F.TYPE_MESSAGE, type_name=".injtest.L3")
    l1 = file.message_type.add(name="L1")
    _field(l1, "b", 1, F.TYPE_MESSAGE, type_name=".injtest.L2")
    _field(l1, "xs", 5, F.TYPE_INT32, repeated=True)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"injtest.{m.name}"))
        for m in file.message_type
    }


TYPES = _build_types()
PredictRequest, PredictionsRequest, L1 = TYPES["PredictRequest"], TYPES["PredictionsRequest"], TYPES["L1"]


def ser(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


def with_value(message: Message, path: tuple[int, ...], value: str) -> Message:
    """A copy of `message` with the string at `path` (field numbers) set, through protobuf."""
    out = type(message)()
    out.CopyFrom(message)
    target: Any = out
    for number in path[:-1]:
        target = getattr(target, target.DESCRIPTOR.fields_by_number[number].name)
    setattr(target, target.DESCRIPTOR.fields_by_number[path[-1]].name, value)
    return out


def string_field(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


# -- examples -------------------------------------------------------------------------------
def test_v2_model_name_is_rewritten_in_place_and_the_rest_is_byte_for_byte() -> None:
    request = v2.ModelInferRequest(model_name="vm", model_version="1", id="r")
    request.inputs.add(name="predict", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    request.raw_input_contents.append(b"\x00" * 16)
    out = inject.inject(ser(request), [1], "vm__isvc-0123456789")
    assert out == ser(with_value(request, (1,), "vm__isvc-0123456789"))


def test_tf_serving_model_spec_name_is_rewritten_and_the_spec_length_follows() -> None:
    request = PredictRequest(model_spec={"name": "vm", "signature_name": "serving_default"}, output_filter=["y"])
    request.inputs["x"].float_val.extend([1.5, 2.5])
    out = inject.inject(ser(request), (1, 1), "a-much-longer-model-id__isvc-0123456789")
    assert out == ser(with_value(request, (1, 1), "a-much-longer-model-id__isvc-0123456789"))
    assert inject.read_path(out, [1, 1]) == "a-much-longer-model-id__isvc-0123456789"


def test_missing_messages_on_the_path_are_created_at_the_end() -> None:
    assert inject.inject(b"", [1, 1], "m") == b"\x0a\x03\x0a\x01m"
    raw = ser(PredictRequest(output_filter=["y"], b=True))
    assert inject.inject(raw, [1, 1], "m") == raw + b"\x0a\x03\x0a\x01m"
    spec_without_name = ser(PredictRequest(model_spec={"signature_name": "s"}))
    out = inject.inject(spec_without_name, [1, 1], "m")
    assert PredictRequest.FromString(out).model_spec.name == "m"
    assert PredictRequest.FromString(out).model_spec.signature_name == "s"


def test_three_levels_at_every_depth_of_absence() -> None:
    for message in (L1(), L1(xs=[1, 2]), L1(b={"blob": b"z"}), L1(b={"c": {"n": 7}}), L1(b={"c": {"n": 7, "id": "x"}})):
        out = L1.FromString(inject.inject(ser(message), [1, 2, 3], "deep"))
        assert ser(out) == ser(with_value(message, (1, 2, 3), "deep"))


def test_repeated_occurrences_protobuf_would_merge() -> None:
    # the name twice at the top: the first is replaced in place, the later one dropped
    raw = string_field(1, b"a") + b"\x10\x01" + string_field(1, b"b")
    assert inject.inject(raw, [1], "m") == string_field(1, b"m") + b"\x10\x01"
    # model_spec in two pieces (protobuf merges them): both read the new name
    first = ser(PredictRequest(model_spec={"name": "vm"}))
    second = ser(PredictRequest(model_spec={"signature_name": "s"}))
    assert inject.read_path(first + second, [1, 1]) == "vm"
    merged = PredictRequest.FromString(inject.inject(first + second, [1, 1], "m"))
    assert merged.model_spec.name == "m" and merged.model_spec.signature_name == "s"


def test_same_value_once_returns_the_input_object() -> None:
    raw = ser(PredictRequest(model_spec={"name": "m"}, b=True))
    assert inject.inject(raw, [1, 1], "m") is raw
    doubled = string_field(1, b"m") + string_field(1, b"m")
    assert inject.inject(doubled, [1], "m") == string_field(1, b"m")


def test_tags_keep_their_bytes_and_groups_and_unknown_fields_pass_through() -> None:
    overlong_tag = b"\x8a\x00"  # field 1, LEN, as a two-byte varint
    group = encode_varint(500 << 3 | 3) + b"\x08\x05" + encode_varint(500 << 3 | 4)
    raw = group + overlong_tag + b"\x02vm" + b"\xf9\x3e12345678"
    out = inject.inject(raw, [1], "model")
    assert out == group + overlong_tag + b"\x05model" + b"\xf9\x3e12345678"
    assert v2.ModelInferRequest.FromString(out).model_name == "model"


def test_torchserve_predictions_model_name() -> None:
    request = PredictionsRequest(model_name="vm", model_version="2", input={"data": b"\x01\x02"})
    assert ser(PredictionsRequest.FromString(inject.inject(ser(request), [1], "id"))) == ser(with_value(request, (1,), "id"))


def test_read_path_of_absent_fields_is_none_and_of_empty_is_empty() -> None:
    assert inject.read_path(b"", [1, 1]) is None
    assert inject.read_path(ser(PredictRequest(model_spec={"signature_name": "s"})), [1, 1]) is None
    assert inject.read_path(string_field(1, b""), [1]) == ""


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        pytest.param(b"\x08\x01", [1], "wire type varint", id="string-as-varint"),
        pytest.param(b"\x09" + b"\x00" * 8, [1], "wire type fixed64", id="string-as-fixed64"),
        pytest.param(b"\x0d" + b"\x00" * 4, [1, 1], "wire type fixed32", id="message-as-fixed32"),
        pytest.param(b"\x0a\x02\x08\x01", [1, 1], "element 2 of field path [1, 1]", id="nested-string-as-varint"),
    ],
)
def test_a_wrong_wire_type_on_the_path_is_a_clear_error(raw: bytes, path: list[int], words: str) -> None:
    for call in (lambda: inject.inject(raw, path, "m"), lambda: inject.read_path(raw, path)):
        with pytest.raises(WireError, match="must be length-delimited") as err:
            call()
        assert words in str(err.value)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(ser(PredictRequest(model_spec={"name": "vm"}, b=True))[:-1], id="truncated-varint-field"),
        pytest.param(b"\x0a\x10abc", id="length-past-end"),
        pytest.param(b"\x0a", id="missing-length"),
        pytest.param(b"\x0a\x05\x0a\x09abc", id="inner-length-past-its-message"),
        pytest.param(b"\x0a\x01\xff", id="message-that-is-not-one"),
        pytest.param(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", id="varint-too-long"),
        pytest.param(b"\x00\x01", id="field-zero"),
        pytest.param(b"\x0e\x00", id="wire-type-6"),
        pytest.param(b"\x0f\x00", id="wire-type-7"),
        pytest.param(b"\x1c", id="end-group-alone"),
        pytest.param(b"\x1b\x08\x01", id="group-not-closed"),
        pytest.param(b"\x1b\x24", id="group-closed-by-another-field"),
        pytest.param(b"\x11\x01\x02", id="fixed64-truncated"),
        pytest.param(b"\x15\x01", id="fixed32-truncated"),
        pytest.param(b"\x80\x80\x80\x80\x10\x00", id="field-number-out-of-range"),
    ],
)
def test_malformed_input_raises_wire_error(raw: bytes) -> None:
    with pytest.raises(WireError):
        inject.inject(raw, [1, 1], "m")
    with pytest.raises(WireError):
        inject.read_path(raw, [1, 1])


def test_read_path_rejects_a_name_that_is_not_utf8_and_inject_replaces_it() -> None:
    raw = string_field(1, b"\xff\xfe")
    with pytest.raises(WireError, match="UTF-8"):
        inject.read_path(raw, [1])
    assert inject.inject(raw, [1], "m") == string_field(1, b"m")


@pytest.mark.parametrize("path", [[], [0], [1 << 29], [True], [1] * 33, [1, -1]])
def test_invalid_paths_are_refused(path: list[int]) -> None:
    with pytest.raises(ValueError):
        inject.check_path(path)


# -- properties -----------------------------------------------------------------------------
names = st.text(max_size=30)
values = st.text(max_size=60)


@st.composite
def infer_requests(draw: st.DrawFn) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=draw(names), model_version=draw(names), id=draw(names))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(names), datatype=draw(st.sampled_from(["FP32", "INT64", "BYTES"])),
            shape=draw(st.lists(st.integers(0, 2**40), max_size=3)),
        )
        tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)))
    request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=200), max_size=3)))
    for key, number in draw(st.dictionaries(names, st.integers(-(2**63), 2**63 - 1), max_size=3)).items():
        request.parameters[key].int64_param = number
    return request


@st.composite
def predict_requests(draw: st.DrawFn) -> Message:
    request = PredictRequest(
        output_filter=draw(st.lists(names, max_size=2)), f64=draw(st.integers(0, 2**64 - 1)),
        f32=draw(st.integers(-(2**31), 2**31 - 1)), d=draw(st.floats(allow_nan=False)),
        s=draw(st.integers(-(2**63), 2**63 - 1)), b=draw(st.booleans()),
    )
    if draw(st.booleans()):
        request.model_spec.SetInParent()
        request.model_spec.name = draw(names)
        request.model_spec.signature_name = draw(names)
        if draw(st.booleans()):
            request.model_spec.version.value = draw(st.integers(-(2**63), 2**63 - 1))
    for key in draw(st.lists(names, max_size=2)):
        tensor = request.inputs[key]
        tensor.dtype = draw(st.integers(0, 20))
        tensor.tensor_content = draw(st.binary(max_size=100))
        tensor.float_val.extend(draw(st.lists(st.floats(allow_nan=False, width=32), max_size=4)))
    return request


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """Fields no schema here defines (numbers 100..5000), of every wire type, groups included."""
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        number = draw(st.integers(100, 5000))
        kind = draw(st.sampled_from(["varint", "i64", "len", "i32", "group"]))
        if kind == "varint":
            out += encode_varint(number << 3) + encode_varint(draw(st.integers(0, 2**64 - 1)))
        elif kind == "i64":
            out += encode_varint(number << 3 | 1) + draw(st.binary(min_size=8, max_size=8))
        elif kind == "len":
            out += string_field(number, draw(st.binary(max_size=40)))
        elif kind == "i32":
            out += encode_varint(number << 3 | 5) + draw(st.binary(min_size=4, max_size=4))
        else:
            inner = encode_varint(1 << 3) + encode_varint(draw(st.integers(0, 1000)))
            out += encode_varint(number << 3 | 3) + inner + encode_varint(number << 3 | 4)
    return out


def check(cls: type[Message], raw: bytes, path: tuple[int, ...], value: str) -> bytes:
    """The invariants for one input: what protobuf parses from the output, and read_path."""
    original = cls.FromString(raw)
    out = inject.inject(raw, path, value)
    assert ser(cls.FromString(out)) == ser(with_value(original, path, value))
    assert inject.read_path(out, path) == value
    return out


@settings(max_examples=300, deadline=None)
@given(request=infer_requests(), value=values)
def test_v2_infer_request_property(request: v2.ModelInferRequest, value: str) -> None:
    raw = ser(request)
    assert inject.read_path(raw, [1]) == (request.model_name or None)
    out = check(v2.ModelInferRequest, raw, (1,), value)
    if request.model_name and value:  # in place: what protobuf writes (it leaves "" out, we write it)
        assert out == ser(with_value(request, (1,), value))
    elif not request.model_name:  # absent: appended, everything before it untouched
        assert out == raw + string_field(1, value.encode())


@settings(max_examples=300, deadline=None)
@given(request=predict_requests(), value=values)
def test_tf_predict_request_property(request: Message, value: str) -> None:
    raw = ser(request)
    has_spec = request.HasField("model_spec")  # type: ignore[attr-defined]
    assert inject.read_path(raw, [1, 1]) == ((request.model_spec.name or None) if has_spec else None)  # type: ignore[attr-defined]
    out = check(PredictRequest, raw, (1, 1), value)
    if has_spec and request.model_spec.name and value:  # type: ignore[attr-defined]
        assert out == ser(with_value(request, (1, 1), value))
    elif not has_spec:
        assert out == raw + string_field(1, string_field(1, value.encode()))


@settings(max_examples=200, deadline=None)
@given(first=infer_requests(), second=infer_requests(), value=values)
def test_concatenated_messages_merge_like_protobuf(first: v2.ModelInferRequest, second: v2.ModelInferRequest, value: str) -> None:
    raw = ser(first) + ser(second)
    assert inject.read_path(raw, [1]) == (v2.ModelInferRequest.FromString(raw).model_name or None)
    check(v2.ModelInferRequest, raw, (1,), value)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(predict_requests(), min_size=2, max_size=3), value=values)
def test_a_model_spec_in_several_pieces_merges_like_protobuf(pieces: list[Message], value: str) -> None:
    raw = b"".join(ser(piece) for piece in pieces)
    merged = PredictRequest.FromString(raw)
    expected = (merged.model_spec.name or None) if merged.HasField("model_spec") else None  # type: ignore[attr-defined]
    assert inject.read_path(raw, [1, 1]) == expected
    check(PredictRequest, raw, (1, 1), value)


@settings(max_examples=200, deadline=None)
@given(request=predict_requests(), top=unknown_fields(), nested=unknown_fields(), value=values)
def test_unknown_fields_survive_at_every_level(request: Message, top: bytes, nested: bytes, value: str) -> None:
    # unknown fields inside model_spec too: the spec is written by hand around them
    spec = ser(request.model_spec) + nested  # type: ignore[attr-defined]
    request.ClearField("model_spec")
    raw = top + ser(request) + string_field(1, spec)
    out = check(PredictRequest, raw, (1, 1), value)
    assert out.startswith(top)


@settings(max_examples=200, deadline=None)
@given(message=st.builds(lambda n, blob, xs: L1(b={"blob": blob, "c": {"n": n}}, xs=xs), st.integers(-5, 5),
                         st.binary(max_size=20), st.lists(st.integers(-5, 5), max_size=3)),
       value=values)
def test_three_level_path_property(message: Message, value: str) -> None:
    check(L1, ser(message), (1, 2, 3), value)


@settings(max_examples=300, deadline=None)
@given(request=predict_requests(), cut=st.integers(min_value=0), value=values)
def test_truncated_requests_raise_wire_error_or_stay_consistent(request: Message, cut: int, value: str) -> None:
    raw = ser(request)
    if not raw:
        return
    truncated = raw[: cut % len(raw)]
    try:
        out = inject.inject(truncated, [1, 1], value)
    except WireError:
        return
    # the cut fell between two top-level fields: what is left is a valid, shorter message
    assert inject.read_path(out, [1, 1]) == value
    check(PredictRequest, truncated, (1, 1), value)


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=200), path=st.lists(st.integers(1, 4), min_size=1, max_size=3), value=values)
def test_arbitrary_bytes_raise_only_wire_error(raw: bytes, path: list[int], value: str) -> None:
    try:
        out = inject.inject(raw, path, value)
    except WireError:
        return
    assert inject.read_path(out, path) == value
