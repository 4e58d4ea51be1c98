"""The puller: the sidecar of every runtime pod (ModelRuntime gRPC :8085).

Owns the pod's model directory and its measured memory: downloads model files (S3, GCS, Azure,
HTTP, PVC; the node cache), has its model server (MLServer, Triton, OVMS, or a runtime serving
ModelRuntime itself) load them, measures what each took and reports the pod to the scheduler.

Layers (kept by `lint-imports`, pyproject.toml): `__main__` -> `app` (composition root) ->
`server` (gRPC transport) -> `service` (use cases) -> adapters (`adapter`, `*_adapter`,
`storage*`, `model_cache`, `memory`, `keras_converter`, `metrics`) -> pure logic
(`*_layout`, `model_files`) -> `settings`. May import `meshserve.common`; never another service.
"""
