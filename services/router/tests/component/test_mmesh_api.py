"""ModelMesh's management API (`mmesh.ModelMesh`, mmesh_api.py) against a real scheduler.

A real stack without a router: Redis, Postgres, S3 (moto), the scheduler process and one
runtime pod (MLServer + puller), started by the devstack (`Stack`) once for the module. Each
test hosts the servicer on its own grpc.aio server on port 0, behind a catch-all generic
handler added first (as the router's other-RPC handler is), and drives it with the
generated `mmesh.ModelMesh` client stub. Field numbers are also checked against upstream's
(a table written here from kserve/modelmesh's model-mesh.proto) and once with request and
response bytes written by hand, so a wrong number in our .proto cannot pass.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig
from meshserve.common.proto.mmesh import model_mesh_pb2 as mm
from meshserve.common.proto.mmesh import model_mesh_pb2_grpc as mmg
from meshserve.router.mmesh_api import add_to_server
from meshserve.router.wire import encode_varint

ROOT = Path(__file__).resolve().parents[4]
MNIST = ROOT / "examples" / "models" / "sklearn" / "mnist-svm.joblib"
MNIST_KEY = "sklearn/mnist-svm.joblib"
MNIST_URI = f"s3://{EXAMPLE_BUCKET}/{MNIST_KEY}"
IRIS_KEY = "sklearn/iris-logreg.joblib"
S = mm.ModelStatusInfo.ModelStatus
V = mm.VModelStatusInfo.VModelStatus
CATCH_ALL = "caught by the catch-all handler"

pytestmark = pytest.mark.timeout(300)


# -- the stack ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not MNIST.exists():
        pytest.fail("example models missing: run `make examples` (make test does it)")
    # no waiting for a runtime to appear (scale from zero): a model no pod serves fails at once
    env = {"MESHSERVE_SCHEDULER_RUNTIME_WAIT_SECONDS": "0"}
    s = Stack(StackConfig.from_env(tmp_path_factory.mktemp("mmesh-stack"), pods=1, isolate=True, extra_env=env))
    try:
        s.start_infra()
        s.migrate()
        s.start_scheduler()
        s3 = s.s3_client()
        try:
            s3.create_bucket(Bucket=EXAMPLE_BUCKET)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        for key in (MNIST_KEY, IRIS_KEY):
            s3.upload_file(str(ROOT / "examples" / "models" / key), EXAMPLE_BUCKET, key)
        s.wait_for_pods([s.start_pod()])
        yield s
    finally:
        s.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.when == "call" and report.failed and isinstance(stack, Stack):
        for proc in stack.group.procs:
            report.sections.append((f"log of {proc.name}", proc.tail(30)))


class CatchAll(grpc.GenericRpcHandler):
    """Every method, as the router's other-RPC handler takes every method it is asked for."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, CATCH_ALL)
            return b""

        return grpc.unary_unary_rpc_method_handler(refuse)


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to a grpc.aio server hosting the servicer (over the stack's scheduler)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((CatchAll(),))
    async with grpc.aio.insecure_channel(stack.scheduler_grpc) as scheduler:
        servicer = add_to_server(server, scheduler)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as client:
                yield client
        finally:
            await server.stop(grace=None)
            await servicer.close()


@pytest.fixture
def mesh(channel: grpc.aio.Channel) -> mmg.ModelMeshStub:
    return mmg.ModelMeshStub(channel)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sklearn(path: str = MNIST_URI) -> mm.ModelInfo:
    return mm.ModelInfo(type="mt:sklearn", path=path)


def controller_style(path: str = MNIST_KEY) -> mm.ModelInfo:
    """What ModelMesh Serving's controller sends for an InferenceService with storageUri s3://..."""
    key = {"storage_key": "localMinIO", "storage_params": {"type": "s3", "bucket": EXAMPLE_BUCKET},
           "model_type": {"name": "sklearn"}}
    return mm.ModelInfo(type="mt:sklearn", path=path, key=json.dumps(key))


async def error_of(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def status_until(mesh: mmg.ModelMeshStub, model_id: str, wanted: int) -> mm.ModelStatusInfo:
    """Poll getModelStatus (backing off, at most 90 s) until it reads `wanted`."""
    delay = 0.05
    async with asyncio.timeout(90):
        while True:
            status = await mesh.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=10)
            if status.status == wanted:
                return status
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)


# -- the contract ---------------------------------------------------------------------------
UPSTREAM_FIELDS = {  # kserve/modelmesh src/main/proto/current/model-mesh.proto (ea13cdc)
    "RegisterModelRequest": {"modelId": 1, "modelInfo": 2, "loadNow": 3, "sync": 4, "lastUsedTime": 5},
    "ModelInfo": {"type": 1, "path": 2, "key": 3},
    "ModelStatusInfo": {"status": 1, "errors": 2, "modelCopyInfos": 3},
    "ModelStatusInfo.ModelCopyInfo": {"location": 1, "copyStatus": 2, "time": 3},
    "UnregisterModelRequest": {"modelId": 1},
    "UnregisterModelResponse": {},
    "GetStatusRequest": {"modelId": 1},
    "EnsureLoadedRequest": {"modelId": 1, "lastUsedTime": 2, "sync": 4},
    "VModelStatusInfo": {"status": 1, "activeModelId": 2, "targetModelId": 3, "activeModelStatus": 4,
                         "targetModelStatus": 5, "owner": 6},
    "DeleteVModelRequest": {"vModelId": 1, "owner": 2},
    "DeleteVModelResponse": {},
    "SetVModelRequest": {"vModelId": 1, "targetModelId": 2, "updateOnly": 3, "modelInfo": 4, "autoDeleteTargetModel": 5,
                         "loadNow": 6, "force": 7, "sync": 8, "expectedTargetModelId": 9, "owner": 10},
    "GetVModelStatusRequest": {"vModelId": 1, "owner": 2},
}
UPSTREAM_METHODS = {
    "registerModel": ("RegisterModelRequest", "ModelStatusInfo"),
    "unregisterModel": ("UnregisterModelRequest", "UnregisterModelResponse"),
    "getModelStatus": ("GetStatusRequest", "ModelStatusInfo"),
    "ensureLoaded": ("EnsureLoadedRequest", "ModelStatusInfo"),
    "setVModel": ("SetVModelRequest", "VModelStatusInfo"),
    "deleteVModel": ("DeleteVModelRequest", "DeleteVModelResponse"),
    "getVModelStatus": ("GetVModelStatusRequest", "VModelStatusInfo"),
}


def test_messages_and_methods_are_upstreams() -> None:
    pool = mm.DESCRIPTOR.pool
    for name, fields in UPSTREAM_FIELDS.items():
        message = pool.FindMessageTypeByName(f"mmesh.{name}")
        assert {f.name: f.number for f in message.fields} == fields, name
    service = mm.DESCRIPTOR.services_by_name["ModelMesh"]
    assert service.full_name == "mmesh.ModelMesh"
    assert {m.name: (m.input_type.name, m.output_type.name) for m in service.methods} == UPSTREAM_METHODS
    assert dict(S.items()) == {"NOT_FOUND": 0, "NOT_LOADED": 1, "LOADING": 2, "LOADED": 3, "LOADING_FAILED": 4, "UNKNOWN": 5}
    assert dict(V.items()) == {"NOT_FOUND": 0, "DEFINED": 1, "TRANSITIONING": 2, "TRANSITION_FAILED": 3, "UNKNOWN": 5}


def ld(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


async def test_hand_written_bytes(channel: grpc.aio.Channel) -> None:
    """registerModel as raw bytes (modelId=1, modelInfo=2 {type=1, path=2}); the answer read by hand."""
    model_id = uid("raw")
    request = ld(1, model_id.encode()) + ld(2, ld(1, b"mt:sklearn") + ld(2, MNIST_URI.encode()))
    call = channel.unary_unary("/mmesh.ModelMesh/registerModel")
    reply = await call(request, timeout=30)
    assert reply == bytes([1 << 3 | 0, S.NOT_LOADED])   # status (field 1, varint) = NOT_LOADED, nothing else
    status = await channel.unary_unary("/mmesh.ModelMesh/getModelStatus")(ld(1, model_id.encode()), timeout=30)
    assert status == bytes([1 << 3 | 0, S.NOT_LOADED])


async def test_other_methods_still_reach_the_catch_all(channel: grpc.aio.Channel) -> None:
    err = await error_of(channel.unary_unary("/mmesh.ModelRuntime/loadModel")(b"", timeout=10))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNIMPLEMENTED, CATCH_ALL)


# -- models ---------------------------------------------------------------------------------
async def test_register_then_ensure_loaded(mesh: mmg.ModelMeshStub, stack: Stack) -> None:
    model_id = uid("reg")
    status = await mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=sklearn()), timeout=30)
    assert status.status == S.NOT_LOADED and not status.modelCopyInfos
    status = await mesh.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=30)
    assert status.status == S.NOT_LOADED
    # the same attributes again: no change, no error
    again = await mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=sklearn()), timeout=30)
    assert again.status == S.NOT_LOADED

    loaded = await mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId=model_id, sync=True), timeout=120)
    assert loaded.status == S.LOADED
    assert [(c.location, c.copyStatus) for c in loaded.modelCopyInfos] == [("pod-0", S.LOADED)]
    assert loaded.modelCopyInfos[0].time > 0
    status = await mesh.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=30)
    assert status.status == S.LOADED and status.modelCopyInfos[0].location == "pod-0"


TYPE_FORMS = [  # modelInfo.type as ModelMesh Serving's controller writes it, and a bare format
    pytest.param("mt:sklearn", {}, id="format-label"),
    pytest.param("mt:sklearn:0|pv:grpc-v2", {}, id="format-version-protocol"),
    pytest.param("rt:mlserver-1.x", {"model_type": {"name": "sklearn"}}, id="runtime-label-format-in-key"),
    pytest.param("rt:mlserver-1.x|pv:grpc-v2", {"model_type": {"name": "sklearn", "version": "0"}}, id="runtime-protocol"),
    pytest.param("sklearn", {}, id="bare-format"),
]


@pytest.mark.parametrize(("type_", "key"), TYPE_FORMS)
async def test_register_with_load_now_sync(mesh: mmg.ModelMeshStub, type_: str, key: dict[str, object]) -> None:
    model_id = uid("now")
    info = mm.ModelInfo(
        type=type_, path=MNIST_KEY,
        key=json.dumps({"storage_key": "localMinIO", "storage_params": {"type": "s3", "bucket": EXAMPLE_BUCKET}, **key}),
    )
    status = await mesh.registerModel(
        mm.RegisterModelRequest(modelId=model_id, modelInfo=info, loadNow=True, sync=True), timeout=120
    )
    assert status.status == S.LOADED, status
    assert [c.copyStatus for c in status.modelCopyInfos] == [S.LOADED]


async def test_register_with_load_now_returns_before_the_load(mesh: mmg.ModelMeshStub) -> None:
    model_id = uid("bg")
    status = await mesh.registerModel(
        mm.RegisterModelRequest(modelId=model_id, modelInfo=sklearn(), loadNow=True), timeout=30
    )
    assert status.status in (S.LOADING, S.LOADED)
    await status_until(mesh, model_id, S.LOADED)


async def test_ensure_loaded_without_sync_starts_the_load(mesh: mmg.ModelMeshStub) -> None:
    model_id = uid("ens")
    await mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=sklearn()), timeout=30)
    status = await mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId=model_id), timeout=30)
    assert status.status in (S.LOADING, S.LOADED)
    await status_until(mesh, model_id, S.LOADED)
    again = await mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId=model_id), timeout=30)
    assert again.status == S.LOADED


async def test_a_failed_load_is_a_status(mesh: mmg.ModelMeshStub) -> None:
    model_id = uid("bad")
    info = sklearn(f"s3://{EXAMPLE_BUCKET}/sklearn/no-such-model.joblib")
    status = await mesh.registerModel(
        mm.RegisterModelRequest(modelId=model_id, modelInfo=info, loadNow=True, sync=True), timeout=120
    )
    assert status.status == S.LOADING_FAILED and status.errors, status
    again = await mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId=model_id, sync=True), timeout=120)
    assert again.status == S.LOADING_FAILED and again.errors
    read = await mesh.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=30)
    assert read.status == S.LOADING_FAILED


async def test_a_runtime_no_pod_serves(mesh: mmg.ModelMeshStub) -> None:
    model_id = uid("nort")
    info = mm.ModelInfo(type="rt:no-such-runtime", path=MNIST_URI, key=json.dumps({"model_type": {"name": "sklearn"}}))
    status = await mesh.registerModel(
        mm.RegisterModelRequest(modelId=model_id, modelInfo=info, loadNow=True, sync=True), timeout=120
    )
    # upstream's error text, which ModelMesh Serving's controller decodes (RuntimeNotRecognized)
    no_home = "There are no running instances that meet the label requirements of type rt:no-such-runtime: [rt:no-such-runtime]"
    assert (status.status, list(status.errors)) == (S.LOADING_FAILED, [no_home]), status
    again = await mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId=model_id, sync=True), timeout=120)
    assert (again.status, list(again.errors)) == (S.LOADING_FAILED, [no_home]), again


async def test_register_with_other_attributes_is_already_exists(mesh: mmg.ModelMeshStub) -> None:
    model_id = uid("dup")
    await mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=sklearn()), timeout=30)
    other = sklearn(f"s3://{EXAMPLE_BUCKET}/{IRIS_KEY}")
    err = await error_of(mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=other), timeout=30))
    assert (err.code(), err.details()) == (grpc.StatusCode.ALREADY_EXISTS, "Model already exists with different attribute values")


async def test_unregister(mesh: mmg.ModelMeshStub) -> None:
    model_id = uid("unreg")
    await mesh.registerModel(
        mm.RegisterModelRequest(modelId=model_id, modelInfo=sklearn(), loadNow=True, sync=True), timeout=120
    )
    await mesh.unregisterModel(mm.UnregisterModelRequest(modelId=model_id), timeout=30)
    status = await mesh.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=30)
    assert status == mm.ModelStatusInfo(status=S.NOT_FOUND)
    await mesh.unregisterModel(mm.UnregisterModelRequest(modelId=model_id), timeout=30)  # gone: still fine


async def test_unknown_ids(mesh: mmg.ModelMeshStub) -> None:
    model_id, vmodel_id = uid("nobody"), uid("novm")
    status = await mesh.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=30)
    assert status == mm.ModelStatusInfo(status=S.NOT_FOUND)   # no errors, no copies, as upstream
    for sync in (False, True):
        err = await error_of(mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId=model_id, sync=sync), timeout=30))
        assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "model not found")
    await mesh.unregisterModel(mm.UnregisterModelRequest(modelId=model_id), timeout=30)
    err = await error_of(mesh.setVModel(mm.SetVModelRequest(vModelId=vmodel_id, targetModelId=model_id), timeout=30))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, f"Target model {model_id} not found")
    vstatus = await mesh.getVModelStatus(mm.GetVModelStatusRequest(vModelId=vmodel_id), timeout=30)
    assert vstatus == mm.VModelStatusInfo() and vstatus.status == V.NOT_FOUND
    await mesh.deleteVModel(mm.DeleteVModelRequest(vModelId=vmodel_id), timeout=30)


INVALID = [
    pytest.param("registerModel", mm.RegisterModelRequest(modelInfo=sklearn()), "modelId", id="register-no-id"),
    pytest.param("registerModel", mm.RegisterModelRequest(modelId="m"), "modelInfo.type", id="register-no-info"),
    pytest.param("registerModel", mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="mt:sklearn")),
                 "modelInfo.path", id="register-no-path"),
    pytest.param("registerModel", mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="rt:mlserver-1.x", path="p")),
                 "modelInfo.type", id="register-runtime-without-format"),
    pytest.param("registerModel", mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="mt:", path="p")),
                 "modelInfo.type", id="register-empty-format"),
    pytest.param("registerModel", mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="mt:sklearn", path="p", key="{nope")),
                 "modelInfo.key", id="register-bad-key-json"),
    pytest.param("registerModel", mm.RegisterModelRequest(modelId="a/b", modelInfo=sklearn()), "model id", id="register-bad-id"),
    pytest.param("unregisterModel", mm.UnregisterModelRequest(), "modelId", id="unregister-no-id"),
    pytest.param("getModelStatus", mm.GetStatusRequest(), "modelId", id="status-no-id"),
    pytest.param("ensureLoaded", mm.EnsureLoadedRequest(sync=True), "modelId", id="ensure-no-id"),
    pytest.param("setVModel", mm.SetVModelRequest(targetModelId="m"), "vModelId", id="set-no-vmodel"),
    pytest.param("setVModel", mm.SetVModelRequest(vModelId="v"), "targetModelId", id="set-no-target"),
    pytest.param("setVModel", mm.SetVModelRequest(vModelId="v", targetModelId="m", modelInfo=mm.ModelInfo(path="p")),
                 "modelInfo.type", id="set-info-no-type"),
    pytest.param("getVModelStatus", mm.GetVModelStatusRequest(), "vModelId", id="vstatus-no-id"),
    pytest.param("deleteVModel", mm.DeleteVModelRequest(), "vModelId", id="delete-no-id"),
]


@pytest.mark.parametrize(("method", "request_", "field"), INVALID)
async def test_invalid_arguments_name_the_field(mesh: mmg.ModelMeshStub, method: str, request_: object, field: str) -> None:
    err = await error_of(getattr(mesh, method)(request_, timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in (err.details() or ""), err.details()


# -- vmodels --------------------------------------------------------------------------------
async def test_vmodel_lifecycle(mesh: mmg.ModelMeshStub) -> None:
    vmodel_id, first, second = uid("vm"), uid("vm-a"), uid("vm-b")
    created = await mesh.setVModel(
        mm.SetVModelRequest(vModelId=vmodel_id, owner="isvc", targetModelId=first, modelInfo=controller_style(),
                            autoDeleteTargetModel=True, loadNow=True, sync=True),
        timeout=120,
    )
    assert (created.status, created.activeModelId, created.targetModelId, created.owner) == (V.DEFINED, first, first, "isvc")
    assert created.activeModelStatus.status == S.LOADED and not created.HasField("targetModelStatus")
    read = await mesh.getVModelStatus(mm.GetVModelStatusRequest(vModelId=vmodel_id, owner="isvc"), timeout=30)
    assert (read.status, read.activeModelId, read.activeModelStatus.status) == (V.DEFINED, first, S.LOADED)

    # another owner: reads as not found, cannot set, deletes nothing
    assert await mesh.getVModelStatus(mm.GetVModelStatusRequest(vModelId=vmodel_id, owner="ksp"), timeout=30) == mm.VModelStatusInfo()
    err = await error_of(mesh.setVModel(mm.SetVModelRequest(vModelId=vmodel_id, owner="ksp", targetModelId=first), timeout=30))
    assert (err.code(), err.details()) == (grpc.StatusCode.ALREADY_EXISTS, f'vmodel {vmodel_id} already exists with different owner "isvc"')
    await mesh.deleteVModel(mm.DeleteVModelRequest(vModelId=vmodel_id, owner="ksp"), timeout=30)
    assert (await mesh.getVModelStatus(mm.GetVModelStatusRequest(vModelId=vmodel_id), timeout=30)).status == V.DEFINED

    # compare-and-set on the target; the target's attributes must match the registered ones
    err = await error_of(mesh.setVModel(
        mm.SetVModelRequest(vModelId=vmodel_id, owner="isvc", targetModelId=second, expectedTargetModelId="elsewhere"), timeout=30
    ))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION, f"Existing target model {first} does not match expected elsewhere"
    )
    err = await error_of(mesh.setVModel(
        mm.SetVModelRequest(vModelId=vmodel_id, owner="isvc", targetModelId=first, modelInfo=controller_style(IRIS_KEY)), timeout=30
    ))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.ALREADY_EXISTS, f"Target model {first} already exists with different attribute values"
    )
    # the checks changed nothing and registered nothing
    assert (await mesh.getModelStatus(mm.GetStatusRequest(modelId=second), timeout=30)).status == S.NOT_FOUND

    # move to a new target: the vmodel flips once it is loaded (sync waits for that)
    moved = await mesh.setVModel(
        mm.SetVModelRequest(vModelId=vmodel_id, owner="isvc", targetModelId=second, expectedTargetModelId=first,
                            modelInfo=controller_style(IRIS_KEY), autoDeleteTargetModel=True, loadNow=True, sync=True),
        timeout=120,
    )
    assert (moved.status, moved.activeModelId, moved.targetModelId) == (V.DEFINED, second, second), moved
    assert moved.activeModelStatus.status == S.LOADED

    await mesh.deleteVModel(mm.DeleteVModelRequest(vModelId=vmodel_id, owner="isvc"), timeout=30)
    assert await mesh.getVModelStatus(mm.GetVModelStatusRequest(vModelId=vmodel_id), timeout=30) == mm.VModelStatusInfo()
    await mesh.deleteVModel(mm.DeleteVModelRequest(vModelId=vmodel_id), timeout=30)  # gone: still fine


async def test_vmodel_on_a_registered_model_and_update_only(mesh: mmg.ModelMeshStub) -> None:
    vmodel_id, model_id = uid("vm2"), uid("vm2-m")
    err = await error_of(mesh.setVModel(
        mm.SetVModelRequest(vModelId=vmodel_id, targetModelId=model_id, modelInfo=sklearn(), updateOnly=True), timeout=30
    ))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, f"vmodel {vmodel_id} not found")
    assert (await mesh.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=30)).status == S.NOT_FOUND

    await mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=sklearn()), timeout=30)
    status = await mesh.setVModel(mm.SetVModelRequest(vModelId=vmodel_id, targetModelId=model_id), timeout=30)
    assert (status.status, status.activeModelId, status.activeModelStatus.status) == (V.DEFINED, model_id, S.NOT_LOADED)
    same = await mesh.setVModel(
        mm.SetVModelRequest(vModelId=vmodel_id, targetModelId=model_id, updateOnly=True, expectedTargetModelId=model_id),
        timeout=30,
    )
    assert (same.status, same.activeModelId) == (V.DEFINED, model_id)
    await mesh.deleteVModel(mm.DeleteVModelRequest(vModelId=vmodel_id), timeout=30)
    # not auto-deleted: the model was registered on its own and stays
    assert (await mesh.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=30)).status == S.NOT_LOADED
