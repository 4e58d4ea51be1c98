"""`meshserve infer` shows Triton's raw output bytes as numbers, like MLServer's typed contents."""

from __future__ import annotations

import numpy as np

from meshserve.cli.main import _unpack_raw_outputs
from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2


def test_raw_outputs_become_typed_contents() -> None:
    reply = v2.ModelInferResponse(model_name="m")
    reply.outputs.add(name="Plus214_Output_0", datatype="FP32", shape=[1, 3])
    reply.outputs.add(name="classes", datatype="INT64", shape=[1])
    reply.raw_output_contents.extend([np.array([0.5, -1.25, 2.0], "<f4").tobytes(), np.array([7], "<i8").tobytes()])
    _unpack_raw_outputs(reply)
    assert list(reply.outputs[0].contents.fp32_contents) == [0.5, -1.25, 2.0]
    assert list(reply.outputs[1].contents.int64_contents) == [7]
    assert not reply.raw_output_contents


def test_an_unknown_datatype_leaves_the_reply_as_it_came() -> None:
    reply = v2.ModelInferResponse(model_name="m")
    reply.outputs.add(name="a", datatype="FP32", shape=[1])
    reply.outputs.add(name="b", datatype="BYTES", shape=[1])
    reply.raw_output_contents.extend([np.array([1.0], "<f4").tobytes(), b"\x01\x00\x00\x00x"])
    _unpack_raw_outputs(reply)
    assert len(reply.raw_output_contents) == 2 and not reply.outputs[0].contents.fp32_contents
