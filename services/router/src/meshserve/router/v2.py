"""The KServe v2 protocol as both router doors speak it: service and method names, the
routing header names, what the server says about itself. PURE: constants and one
version lookup; no I/O beyond reading the installed package's metadata.

Owns: names that the gRPC door (server.py), the REST door (rest.py), the other-RPC
handler and the data plane share, so no door imports another for them.
May import: the standard library only.
"""

from __future__ import annotations

from importlib.metadata import version

SERVICE = "inference.GRPCInferenceService"
"""The KServe v2 gRPC service."""

MODEL_INFER = f"/{SERVICE}/ModelInfer"
MODEL_STREAM_INFER = f"/{SERVICE}/ModelStreamInfer"

MODEL_ID_HEADER = "mm-model-id"
"""The concrete model id: sent by a client to name it, always set on what the router forwards."""
VMODEL_ID_HEADER = "mm-vmodel-id"
"""The vmodel (InferenceService / Predictor name) a client calls."""
MODEL_HEADERS = frozenset({MODEL_ID_HEADER, "mm-model-id-bin", "tas-model-id"})
VMODEL_HEADERS = frozenset({VMODEL_ID_HEADER, "mm-vmodel-id-bin"})
ROUTING_HEADERS = MODEL_HEADERS | VMODEL_HEADERS
BALANCED_HEADER = "mm-balanced"
"""`true`: the client spreads its requests over the copies itself (upstream's header)."""
REQUIRED_HEADER = "mm-required"
"""`all` | `any`: of a request naming several models (repeated id headers), whether every one
must exist (upstream's header; default `any`)."""

SERVER_NAME = "meshserve"
SERVER_EXTENSIONS = ("model_repository_managed",)


def server_version() -> str:
    """The installed meshserve version (ServerMetadata), "0.0.0" when not installed."""
    try:
        return version("meshserve")
    except Exception:
        return "0.0.0"
