"""Upstream ModelMesh's management API (`mmesh.ModelMesh`) through the real router process: on
the router's public gRPC port, whichever data path serves it (Envoy hands these calls to the
Python router, which answers them over the scheduler's API). A tool written for ModelMesh
registers a model, loads it synchronously, names it by a vmodel, cannot unregister it while the
vmodel refers to it, and removes both; the model answers inferences in between."""

from __future__ import annotations

import grpc
import pytest

from meshserve.cli.devstack import Stack
from meshserve.common.proto.mmesh import model_mesh_pb2 as mm
from meshserve.common.proto.mmesh import model_mesh_pb2_grpc as mmg

from .conftest import MNIST_INPUT, MNIST_URI, infer_one

pytestmark = pytest.mark.integration

Status = mm.ModelStatusInfo.ModelStatus
VStatus = mm.VModelStatusInfo.VModelStatus


def test_a_modelmesh_tool_manages_models_through_the_router(stack: Stack, unique: str) -> None:
    model, vmodel = f"mm-{unique}", f"mmv-{unique}"
    with grpc.insecure_channel(stack.router_grpc) as channel:
        api = mmg.ModelMeshStub(channel)
        assert api.getModelStatus(mm.GetStatusRequest(modelId=model), timeout=30).status == Status.NOT_FOUND
        info = mm.ModelInfo(type="mt:sklearn", path=MNIST_URI)
        loaded = api.registerModel(mm.RegisterModelRequest(modelId=model, modelInfo=info, loadNow=True, sync=True),
                                   timeout=180)
        assert loaded.status == Status.LOADED, loaded
        assert [c.copyStatus for c in loaded.modelCopyInfos] == [Status.LOADED]

        v = api.setVModel(mm.SetVModelRequest(vModelId=vmodel, targetModelId=model, owner="tool", sync=True), timeout=60)
        assert (v.status, v.activeModelId, v.owner) == (VStatus.DEFINED, model, "tool"), v
        assert infer_one(stack.router_grpc, vmodel, MNIST_INPUT, inp="predict", out="predict").tolist() == [[8]]

        with pytest.raises(grpc.RpcError) as referred:  # upstream: a model with referents stays
            api.unregisterModel(mm.UnregisterModelRequest(modelId=model), timeout=30)
        assert referred.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (referred.value.details() or "").startswith(f"Model {model} has referents"), referred.value.details()

        with pytest.raises(grpc.RpcError) as refused:
            api.ensureLoaded(mm.EnsureLoadedRequest(modelId=f"nope-{unique}", sync=True), timeout=30)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as bad:
            api.registerModel(mm.RegisterModelRequest(modelId=f"x-{unique}"), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "modelInfo" in (bad.value.details() or "")

        api.deleteVModel(mm.DeleteVModelRequest(vModelId=vmodel, owner="tool"), timeout=30)
        assert api.getVModelStatus(mm.GetVModelStatusRequest(vModelId=vmodel, owner="tool"), timeout=30).status == VStatus.NOT_FOUND
        api.unregisterModel(mm.UnregisterModelRequest(modelId=model), timeout=30)
        assert api.getModelStatus(mm.GetStatusRequest(modelId=model), timeout=30).status == Status.NOT_FOUND
