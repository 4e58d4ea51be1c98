"""Concrete model ids, as ModelMesh Serving makes them.

`<name>__<source>-<first 10 hex chars of SHA-1(spec JSON)>`, source `isvc` for an
InferenceService and `ksp` for a Predictor. A changed spec gives a new id, so a model
id always names one immutable set of files + format.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

SOURCE_ISVC = "isvc"
SOURCE_PREDICTOR = "ksp"


def spec_hash(spec: Any) -> str:
    """First 5 bytes of the SHA-1 of the spec serialised as compact JSON."""
    if isinstance(spec, (bytes, bytearray)):
        raw = bytes(spec)
    elif isinstance(spec, str):
        raw = spec.encode()
    else:
        raw = json.dumps(spec, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha1(raw).hexdigest()[:10]


def model_id(*, name: str, source: str, spec: Any) -> str:
    return f"{name}__{source}-{spec_hash(spec)}"
