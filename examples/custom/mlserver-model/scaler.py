"""A custom MLServer runtime shipped with the model: MLServer imports `implementation` from the
model's own folder, so no image needs rebuilding. It multiplies its FP32 input by the `scale`
read from `weights.json`, and answers `scaled`."""

from __future__ import annotations

import json
import os

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


def read_scale(uri: str) -> float:
    path = os.path.join(uri, "weights.json") if os.path.isdir(uri) else uri
    with open(path) as f:
        return float(json.load(f)["scale"])


class Scaler(MLModel):
    async def load(self) -> bool:
        self.scale = read_scale(await get_model_uri(self._settings))  # a few bytes: no thread needed
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        out = NumpyCodec.encode_output(name="scaled", payload=x * self.scale)
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=[out])
