"""Finalizers: a CR deleted while the controller is down still has its vmodel unregistered.

Against the fake API server process (which honours finalizers and deletionTimestamp as the
real one does) and the scheduler gRPC double; the controller is stopped and started again in
the test (`running_controller`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshserve.controller.finalizers import FINALIZER

from .conftest import NAMESPACE, FakeKube, SchedulerFixture, eventually, running_controller
from .test_kube_controller import ISVCS, SERVING, isvc, setup_namespace

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[4]
PREDICTORS = f"{SERVING}/predictors"


def predictor(name: str) -> dict[str, Any]:
    obj = yaml.safe_load((REPO / "examples/isvc/example-sklearn-mnist-predictor.yaml").read_text())
    obj["metadata"] = {"name": name}
    return dict(obj)


CASES = [
    pytest.param(ISVCS, lambda name: isvc(name), "isvc", id="InferenceService"),
    pytest.param(PREDICTORS, predictor, "ksp", id="Predictor"),
]


async def _ready(kube: FakeKube, scheduler: SchedulerFixture, path: str, name: str) -> dict[str, Any] | None:
    obj = await kube.get(f"{path}/{name}")
    registered = name in scheduler.servicer.vmodels
    return obj if obj and registered and FINALIZER in (obj["metadata"].get("finalizers") or []) else None


@pytest.mark.parametrize(("path", "make", "owner"), CASES)
async def test_a_cr_deleted_while_the_controller_is_down_is_unregistered_when_it_returns(
    fakekube: FakeKube, scheduler: SchedulerFixture, path: str, make: Any, owner: str
) -> None:
    await setup_namespace(fakekube)
    name = "deleted-while-down"
    async with running_controller(fakekube, scheduler) as ctl:
        await eventually(lambda: _flag(ctl.reconciler.ready.is_set()), what="informers synced")
        await fakekube.apply(path, make(name))
        await eventually(lambda: _ready(fakekube, scheduler, path, name), what="registered CR with the finalizer")
    # the controller is down: the delete only marks the CR, and the vmodel stays registered
    marked = await fakekube.request("DELETE", f"{path}/{name}")
    assert marked["metadata"]["deletionTimestamp"] and FINALIZER in marked["metadata"]["finalizers"]
    assert (await fakekube.get(f"{path}/{name}")) is not None
    assert name in scheduler.servicer.vmodels
    # back up: it lists the marked CR, unregisters its vmodel, removes the finalizer, the CR goes
    async with running_controller(fakekube, scheduler):
        async def gone() -> bool:
            return await fakekube.get(f"{path}/{name}") is None and name not in scheduler.servicer.vmodels
        await eventually(gone, what="vmodel deleted and CR gone")
    assert (name, owner) in scheduler.servicer.deleted


async def test_a_cr_deleted_while_the_controller_runs_goes_through_its_finalizer(
    fakekube: FakeKube, scheduler: SchedulerFixture
) -> None:
    await setup_namespace(fakekube)
    async with running_controller(fakekube, scheduler) as ctl:
        await eventually(lambda: _flag(ctl.reconciler.ready.is_set()), what="informers synced")
        await fakekube.apply(ISVCS, isvc("live-delete"))
        await eventually(lambda: _ready(fakekube, scheduler, ISVCS, "live-delete"), what="registered with the finalizer")
        await fakekube.request("DELETE", f"{ISVCS}/live-delete")

        async def gone() -> bool:
            return await fakekube.get(f"{ISVCS}/live-delete") is None and "live-delete" not in scheduler.servicer.vmodels
        await eventually(gone, what="vmodel deleted and CR gone")
    log = await fakekube.get("/_control/requests")
    patches = [r for r in log if r["method"] == "PATCH" and r["path"] == f"{ISVCS}/live-delete"]
    # one patch adds the finalizer, one removes it; both JSON patches (safe against other writers)
    assert len(patches) == 2 and {r["contentType"] for r in patches} == {"application/json-patch+json"}


async def test_an_invalid_cr_gets_no_finalizer(fakekube: FakeKube, scheduler: SchedulerFixture) -> None:
    """Nothing is registered for it, so nothing has to hold its deletion."""
    await setup_namespace(fakekube)
    async with running_controller(fakekube, scheduler) as ctl:
        await eventually(lambda: _flag(ctl.reconciler.ready.is_set()), what="informers synced")
        await fakekube.apply(ISVCS, isvc("bad", storageUri="s3://models/sklearn/model.joblib"))

        async def invalid() -> Any:
            obj = await fakekube.get(f"{ISVCS}/bad")
            return obj if ((obj.get("status") or {}).get("modelStatus") or {}).get("transitionStatus") == "InvalidSpec" else None
        obj = await eventually(invalid, what="InvalidSpec status")
        assert not obj["metadata"].get("finalizers")
        await fakekube.request("DELETE", f"{ISVCS}/bad")
        assert await fakekube.get(f"{ISVCS}/bad") is None


async def test_the_fake_api_server_honours_finalizers(fakekube: FakeKube) -> None:
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    await fakekube.apply(path, {"metadata": {"name": "held", "finalizers": ["a.example/x", "b.example/y"]}, "data": {}})
    marked = await fakekube.request("DELETE", f"{path}/held")
    stamp = marked["metadata"]["deletionTimestamp"]
    assert stamp and (await fakekube.get(f"{path}/held"))["metadata"]["deletionTimestamp"] == stamp
    again = await fakekube.request("DELETE", f"{path}/held")      # no change the second time
    assert again["metadata"]["resourceVersion"] == marked["metadata"]["resourceVersion"]
    with pytest.raises(AssertionError, match="422"):              # no new finalizer once deleting
        await fakekube.request("PATCH", f"{path}/held", [{"op": "add", "path": "/metadata/finalizers/-", "value": "c.example/z"}],
                               content_type="application/json-patch+json")
    await fakekube.request("PATCH", f"{path}/held", {"metadata": {"finalizers": ["b.example/y"]}},
                           content_type="application/merge-patch+json")
    assert (await fakekube.get(f"{path}/held")) is not None       # one finalizer left
    await fakekube.request("PATCH", f"{path}/held", [{"op": "remove", "path": "/metadata/finalizers/0"}],
                           content_type="application/json-patch+json")
    assert await fakekube.get(f"{path}/held") is None             # the last one removed: deleted


async def _flag(value: bool) -> bool:
    return value
