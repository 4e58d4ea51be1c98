"""The walking skeleton on real parts: a model in S3 answered through the router."""

from __future__ import annotations

import asyncio
import concurrent.futures

import grpc
import numpy as np
import pytest
import redis
import tritonclient.grpc as grpcclient
from sqlalchemy import create_engine, text
from tritonclient.utils import InferenceServerException

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack
from meshserve.common.proto.meshserve.v1 import scheduler_pb2, scheduler_pb2_grpc
from meshserve.scheduler.registry import to_sync_url

from .conftest import EXAMPLES, IRIS_URI, MNIST_INPUT, MNIST_URI, mnist_inputs, wait_for

pytestmark = pytest.mark.integration


def _registry_row(stack: Stack, model_id: str) -> dict[str, object] | None:
    engine = create_engine(to_sync_url(stack.database_url))
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT id, model_type, storage_uri FROM models WHERE id = :i"), {"i": model_id}).mappings().first()
            return dict(row) if row else None
    finally:
        engine.dispose()


def _events(stack: Stack, model_id: str, kind: str) -> list[dict[str, object]]:
    items = stack.admin("GET", f"/v1/events?model={model_id}&limit=1000").json()["items"]
    return [e for e in items if e["kind"] == kind]


def test_register_then_infer_with_unmodified_tritonclient(stack: Stack, triton: grpcclient.InferenceServerClient, unique: str) -> None:
    name = f"mnist-{unique}"
    response = stack.register(name, storage_uri=MNIST_URI, storageKey="localMinIO")
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "Standby"
    assert _registry_row(stack, name) == {"id": name, "model_type": "sklearn", "storage_uri": MNIST_URI}

    result = triton.infer(name, mnist_inputs())
    assert result.as_numpy("predict").tolist() == [[8]]
    assert result.get_response().model_name == name

    model = stack.admin("GET", f"/v1/models/{name}").json()
    assert model["state"] == "Loaded"
    assert len(model["copies"]) == 1 and model["copies"][0]["state"] == "loaded"
    # measured, or (when the pod's allocator reused memory freed by earlier unloads and the
    # model server did not grow) the prediction from the files; the measured path on fresh
    # pods is checked in test_scheduler_resilience
    assert (model["sizes"]["measured"] or model["sizes"]["predicted"] or 0) > 0
    assert [e["kind"] for e in model["events"]][:2] == ["placed", "registered"]


def test_a_registered_model_gets_its_size_predicted_before_its_first_request(stack: Stack, unique: str) -> None:
    """Registration asks a compatible pod for the size (the files' bytes x 1.25) in the
    background, so the first load does not wait for the storage listing; that size is
    what the first copy reserves."""
    name = f"predicted-{unique}"
    disk = (EXAMPLES / "sklearn" / "iris-logreg.joblib").stat().st_size
    assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    def predicted() -> dict[str, int | None] | None:
        sizes: dict[str, int | None] = stack.admin("GET", f"/v1/models/{name}").json()["sizes"]
        return sizes if sizes["predicted"] else None

    sizes = wait_for(predicted, what="the size prediction made at registration")
    assert sizes["predicted"] == int(disk * 1.25)
    assert sizes["measured"] is None  # nothing loaded yet
    assert stack.admin("POST", f"/v1/models/{name}:load").status_code in (200, 202)
    placed = wait_for(lambda: _events(stack, name, "placed"), what="the first copy placed")
    assert placed[0]["details"]["reserved"] == int(disk * 1.25)


def test_health_and_metadata_rpcs_through_the_router(stack: Stack, triton: grpcclient.InferenceServerClient, unique: str) -> None:
    name = f"meta-{unique}"
    assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.get_server_metadata().name == "meshserve"
    assert triton.is_model_ready(name)  # loads it on demand
    assert triton.get_model_metadata(name).name == name
    batch = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    assert triton.infer(name, mnist_inputs(batch)).as_numpy("predict").ravel().tolist() == [0, 2]


def test_register_over_grpc_writes_the_registry(stack: Stack, unique: str) -> None:
    name = f"grpc-{unique}"
    with grpc.insecure_channel(stack.scheduler_grpc) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        info = scheduler_pb2.ModelInfo(model_type="sklearn", storage_uri=IRIS_URI)
        status = stub.RegisterModel(scheduler_pb2.RegisterModelRequest(model_id=name, model_info=info), timeout=30)
        assert status.status == scheduler_pb2.NOT_LOADED
        with pytest.raises(grpc.RpcError) as err:
            stub.RegisterModel(scheduler_pb2.RegisterModelRequest(model_id=f"bad-{unique}", model_info=scheduler_pb2.ModelInfo(storage_uri=IRIS_URI)), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "format" in (err.value.details() or "")
    assert _registry_row(stack, name) is not None


def test_unknown_model_is_not_found_and_named(triton: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        triton.infer("no-such-model", mnist_inputs())
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in err.value.message()


@pytest.mark.parametrize(
    ("data", "datatype"),
    [
        pytest.param(MNIST_INPUT[:, :63], "FP32", id="63-features"),
        pytest.param(np.array([["a"] * 64], dtype=object), "BYTES", id="strings-for-floats"),
    ],
)
def test_wrong_tensor_is_invalid_argument_with_the_servers_reason(
    stack: Stack, triton: grpcclient.InferenceServerClient, data: np.ndarray, datatype: str
) -> None:
    name = "example-sklearn-isvc"
    if stack.admin("GET", f"/v1/models/{name}").status_code == 404:
        assert stack.register(name, storage_uri=MNIST_URI, storageKey="localMinIO").status_code == 201
    with pytest.raises(InferenceServerException) as err:
        triton.infer(name, mnist_inputs(data, datatype=datatype))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT", err.value.message()
    assert err.value.message()  # the model server's reason, verbatim
    # the stack keeps serving
    assert triton.infer(name, mnist_inputs()).as_numpy("predict").tolist() == [[8]]


def test_missing_storage_object_fails_to_load_with_reason(stack: Stack, triton: grpcclient.InferenceServerClient, unique: str) -> None:
    name = f"missing-{unique}"
    uri = f"s3://{EXAMPLE_BUCKET}/invalid/Storage/Path-{unique}.joblib"
    assert stack.register(name, storage_uri=uri).status_code == 201
    with pytest.raises(InferenceServerException) as err:
        triton.infer(name, mnist_inputs())
    assert err.value.status() in ("StatusCode.FAILED_PRECONDITION", "StatusCode.UNAVAILABLE")
    assert f"invalid/Storage/Path-{unique}.joblib" in err.value.message()
    model = stack.admin("GET", f"/v1/models/{name}").json()
    assert model["state"] == "FailedToLoad"
    assert model["lastFailure"]["reason"] == "ModelLoadFailed"
    assert "no object or prefix" in model["lastFailure"]["message"]
    # a second request gets the recorded reason at once, without another load attempt
    with pytest.raises(InferenceServerException) as again:
        triton.infer(name, mnist_inputs())
    assert "no object or prefix" in again.value.message()
    assert len(_events(stack, name, "failed")) == 1


def test_corrupt_model_file_fails_to_load_and_the_stack_keeps_serving(stack: Stack, triton: grpcclient.InferenceServerClient, unique: str) -> None:
    key = f"corrupt/{unique}/model.joblib"
    stack.s3_client().put_object(Bucket=EXAMPLE_BUCKET, Key=key, Body=b"this is not a joblib file")
    name = f"corrupt-{unique}"
    assert stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{key}").status_code == 201
    with pytest.raises(InferenceServerException) as err:
        triton.infer(name, mnist_inputs())
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert stack.admin("GET", f"/v1/models/{name}").json()["state"] == "FailedToLoad"
    good = f"good-{unique}"
    assert stack.register(good, storage_uri=MNIST_URI).status_code == 201
    assert triton.infer(good, mnist_inputs()).as_numpy("predict").tolist() == [[8]]


@pytest.mark.parametrize("missing", ["name", "format"])
def test_register_with_a_missing_field_is_422_naming_it(stack: Stack, missing: str) -> None:
    body = {"name": "x-model", "format": "sklearn", "storageUri": IRIS_URI}
    del body[missing]
    response = stack.admin("POST", "/v1/models", json=body)
    assert response.status_code == 422
    assert any(missing in detail["loc"] for detail in response.json()["detail"])


def test_bad_storage_uri_scheme_is_400(stack: Stack) -> None:
    response = stack.register("bad-scheme", storage_uri="ftp://host/model.joblib")
    assert response.status_code == 400
    assert "unsupported storageUri scheme" in response.json()["error"]


def test_concurrent_first_requests_cause_one_load(stack: Stack, unique: str) -> None:
    name = f"concurrent-{unique}"
    assert stack.register(name, storage_uri=MNIST_URI).status_code == 201

    def call() -> list[list[int]]:
        client = grpcclient.InferenceServerClient(stack.router_grpc)
        try:
            return client.infer(name, mnist_inputs()).as_numpy("predict").tolist()
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: call(), range(8)))
    assert results == [[[8]]] * 8
    assert len(_events(stack, name, "placed")) == 1
    assert len(stack.admin("GET", f"/v1/models/{name}").json()["copies"]) == 1


async def test_concurrent_misses_on_two_routers_share_one_load(stack: Stack, unique: str) -> None:
    """Two scheduler EnsureLoaded calls racing (as from two routers): one load."""
    name = f"race-{unique}"
    assert stack.register(name, storage_uri=IRIS_URI).status_code == 201
    async with grpc.aio.insecure_channel(stack.scheduler_grpc) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        replies = await asyncio.gather(
            *[stub.EnsureLoaded(scheduler_pb2.EnsureLoadedRequest(model_id=name), timeout=60) for _ in range(5)]
        )
    assert {r.endpoints[0].pod_id for r in replies} == {replies[0].endpoints[0].pod_id}
    assert len(_events(stack, name, "placed")) == 1


def test_load_action_retries_after_the_files_are_fixed(stack: Stack, triton: grpcclient.InferenceServerClient, unique: str) -> None:
    key = f"later/{unique}/model.joblib"
    name = f"later-{unique}"
    assert stack.register(name, storage_uri=f"s3://{EXAMPLE_BUCKET}/{key}").status_code == 201
    with pytest.raises(InferenceServerException):
        triton.infer(name, mnist_inputs())
    stack.s3_client().upload_file(str(EXAMPLES / "sklearn" / "mnist-svm.joblib"), EXAMPLE_BUCKET, key)
    response = stack.admin("POST", f"/v1/models/{name}:load")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "Loaded"
    assert triton.infer(name, mnist_inputs()).as_numpy("predict").tolist() == [[8]]


def test_router_traffic_feeds_the_schedulers_shift_counters(stack: Stack, triton: grpcclient.InferenceServerClient, unique: str) -> None:
    """What shift detection reads (`ms:traffic:*`): requests the routers report, and loads a
    request's miss started (one here: the first request; the other two find the copy)."""
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)

    def counters() -> tuple[int, int]:
        requests, loads = client.mget(f"{stack.key_prefix}:traffic:requests", f"{stack.key_prefix}:traffic:loads")
        return int(requests or 0), int(loads or 0)

    try:
        requests, loads = counters()
        name = f"counted-{unique}"
        assert stack.register(name, storage_uri=MNIST_URI).status_code == 201
        for _ in range(3):
            assert triton.infer(name, mnist_inputs()).as_numpy("predict").tolist() == [[8]]
        wait_for(lambda: counters()[0] >= requests + 3, timeout=30, what="the router's usage report")
        assert counters()[1] == loads + 1
    finally:
        client.close()
