"""gRPC surface of the puller (transport layer): the ModelRuntime service (:8085).

Converts messages to calls of `PullerService` (the use cases) and back; errors are mapped to
statuses by the server's `ExceptionToStatusInterceptor` (`app.py`). May import the generated
protos, grpc, `meshserve.common` and `meshserve.puller.service`.
"""

from __future__ import annotations

import grpc

from meshserve.common.labels import parse_formats
from meshserve.common.proto.meshserve.v1 import runtime_pb2 as pb
from meshserve.common.proto.meshserve.v1 import runtime_pb2_grpc
from meshserve.puller.service import PullerService


class ModelRuntimeServicer(runtime_pb2_grpc.ModelRuntimeServicer):
    def __init__(self, service: PullerService) -> None:
        self.service = service

    async def LoadModel(self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext) -> pb.LoadModelResponse:
        result = await self.service.load(
            model_id=request.model_id,
            model_type=request.model_type,
            model_path=request.model_path,
            model_key=request.model_key,
        )
        return pb.LoadModelResponse(
            size_in_bytes=result.size_bytes, measured=result.measured, disk_size_bytes=result.disk_bytes
        )

    async def UnloadModel(self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext) -> pb.UnloadModelResponse:
        await self.service.unload(request.model_id)
        return pb.UnloadModelResponse()

    async def PredictModelSize(
        self, request: pb.PredictModelSizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictModelSizeResponse:
        size = await self.service.predict_size(model_path=request.model_path, model_key=request.model_key, model_id=request.model_id)
        return pb.PredictModelSizeResponse(size_in_bytes=size)

    async def ModelSize(self, request: pb.ModelSizeRequest, context: grpc.aio.ServicerContext) -> pb.ModelSizeResponse:
        model = self.service.loaded.get(request.model_id)
        return pb.ModelSizeResponse(size_in_bytes=model.size_bytes if model else 0)

    async def RuntimeStatus(
        self, request: pb.RuntimeStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.RuntimeStatusResponse:
        s = self.service.settings
        ready = await self.service.adapter.ready()
        used = await self.service.memory.rss_bytes()
        return pb.RuntimeStatusResponse(
            status=pb.RuntimeStatusResponse.READY if ready else pb.RuntimeStatusResponse.STARTING,
            capacity_in_bytes=s.capacity_bytes,
            max_loading_concurrency=s.max_loading_concurrency,
            model_loading_timeout_ms=int(s.load_timeout_seconds * 1000),
            default_model_size_in_bytes=s.default_model_size_bytes,
            runtime_version=f"{s.runtime} ({', '.join(f.name for f in parse_formats(s.supported_formats))})",
            method_infos={
                "inference.GRPCInferenceService/ModelInfer": pb.RuntimeStatusResponse.MethodInfo(id_injection_path=[1]),
                "inference.GRPCInferenceService/ModelMetadata": pb.RuntimeStatusResponse.MethodInfo(
                    id_injection_path=[1]
                ),
            },
            used_bytes=used or 0,
            loaded_model_ids=sorted(self.service.loaded),
        )
