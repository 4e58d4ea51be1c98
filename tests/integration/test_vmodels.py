"""vmodel transitions in the scheduler: the stable name flips only when the new model is
loaded; a new model that fails to load leaves traffic on the old one."""

from __future__ import annotations

import threading

import grpc
import pytest
import tritonclient.grpc as grpcclient

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack
from meshserve.common.proto.meshserve.v1 import scheduler_pb2, scheduler_pb2_grpc

from .conftest import MNIST_URI, mnist_inputs, wait_for

pytestmark = pytest.mark.integration


def test_version_change_has_no_failed_request_and_a_bad_version_is_blocked(stack: Stack, unique: str) -> None:
    vm, v1, v2, bad = f"vm-{unique}", f"vm-{unique}__v1", f"vm-{unique}__v2", f"vm-{unique}__bad"
    copy_key = f"copies/{unique}/mnist.joblib"
    stack.s3_client().copy_object(
        Bucket=EXAMPLE_BUCKET, Key=copy_key, CopySource={"Bucket": EXAMPLE_BUCKET, "Key": "sklearn/mnist-svm.joblib"}
    )
    assert stack.register(v1, storage_uri=MNIST_URI).status_code == 201
    assert stack.register(v2, storage_uri=f"s3://{EXAMPLE_BUCKET}/{copy_key}").status_code == 201
    assert stack.register(bad, storage_uri=f"s3://{EXAMPLE_BUCKET}/nothing/{unique}").status_code == 201
    put = stack.admin("PUT", f"/v1/vmodels/{vm}", json={"targetModelId": v1, "autoDelete": True, "owner": "isvc"})
    assert put.status_code == 200, put.text

    client = grpcclient.InferenceServerClient(stack.router_grpc)
    assert client.infer(vm, mnist_inputs()).get_response().model_name == v1

    served: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        c = grpcclient.InferenceServerClient(stack.router_grpc)
        while not stop.is_set():
            try:
                served.append(c.infer(vm, mnist_inputs()).get_response().model_name)
            except Exception as err:
                failures.append(str(err))
        c.close()

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        assert stack.admin("PUT", f"/v1/vmodels/{vm}", json={"targetModelId": v2, "owner": "isvc", "autoDelete": True}).status_code == 200
        wait_for(lambda: stack.admin("GET", f"/v1/vmodels/{vm}").json()["activeModelId"] == v2)
        wait_for(lambda: bool(served) and served[-1] == v2, timeout=30)
        # the old model was auto-deleted once nothing pointed at it
        wait_for(lambda: stack.admin("GET", f"/v1/models/{v1}").status_code == 404)

        blocked = stack.admin("PUT", f"/v1/vmodels/{vm}", json={"targetModelId": bad, "owner": "isvc"})
        assert blocked.status_code == 200
        wait_for(lambda: stack.admin("GET", f"/v1/vmodels/{vm}").json()["status"] == "TRANSITION_FAILED")
        view = stack.admin("GET", f"/v1/vmodels/{vm}").json()
        assert view["activeModelId"] == v2 and view["targetState"] == "FailedToLoad"
        assert "no object or prefix" in view["targetErrors"][0]
        n = len(served)
        wait_for(lambda: len(served) > n + 5)
    finally:
        stop.set()
        worker.join(30)
        client.close()
    assert failures == []
    assert served[-1] == v2 and set(served) <= {v1, v2}

    with grpc.insecure_channel(stack.scheduler_grpc) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        status = stub.GetVModelStatus(scheduler_pb2.GetVModelStatusRequest(vmodel_id=vm), timeout=10)
        assert status.status == scheduler_pb2.TRANSITION_FAILED
        with pytest.raises(grpc.RpcError) as err:
            stub.SetVModel(scheduler_pb2.SetVModelRequest(vmodel_id=vm, target_model_id=v2, owner="ksp"), timeout=10)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        stub.DeleteVModel(scheduler_pb2.DeleteVModelRequest(vmodel_id=vm, owner="isvc"), timeout=10)
        stub.DeleteVModel(scheduler_pb2.DeleteVModelRequest(vmodel_id=vm, owner="isvc"), timeout=10)  # idempotent
        gone = stub.GetVModelStatus(scheduler_pb2.GetVModelStatusRequest(vmodel_id=vm), timeout=10)
        assert gone.status == scheduler_pb2.VMODEL_NOT_FOUND
