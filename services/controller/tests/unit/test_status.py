from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from meshserve.controller import status as s
from meshserve.controller import status_json as sj
from meshserve.controller.status import (
    CopyInfo,
    FailureReason,
    ModelState,
    ModelStatusCode,
    ModelStatusView,
    PredictorStatus,
    TransitionStatus,
    VModelStatusCode,
    VModelView,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
GRPC, HTTP = "grpc://modelmesh-serving.ns:8033", "http://modelmesh-serving.ns:8008"


def apply(vm: VModelView, prev: PredictorStatus | None = None, now: datetime = NOW) -> PredictorStatus:
    return s.status_from_vmodel(prev or PredictorStatus(), vm, now=now, grpc_endpoint=GRPC, http_endpoint=HTTP)


def model(code: ModelStatusCode, *copies: CopyInfo, errors: tuple[str, ...] = ()) -> ModelStatusView:
    return ModelStatusView(status=code, errors=errors, copies=copies)


def test_fresh_crd_default_status() -> None:
    st0 = sj.from_predictor_status(None)
    assert (st0.available, st0.active_model_state, st0.target_model_state, st0.transition_status) == (
        False, ModelState.PENDING, ModelState.EMPTY, TransitionStatus.UP_TO_DATE)
    assert sj.from_isvc_status({}).active_model_state is ModelState.PENDING


def test_registered_standby_is_available() -> None:
    st1 = apply(VModelView(VModelStatusCode.DEFINED, "a", "a", model(ModelStatusCode.NOT_LOADED)))
    assert (st1.available, st1.active_model_state, st1.transition_status) == (True, ModelState.STANDBY, TransitionStatus.UP_TO_DATE)
    assert st1.last_failure_info is None and st1.grpc_endpoint == GRPC


def test_loaded_with_copies() -> None:
    vm = VModelView(VModelStatusCode.DEFINED, "a", "a", model(ModelStatusCode.LOADED, CopyInfo("pod-1", ModelStatusCode.LOADED),
                                                              CopyInfo("pod-2", ModelStatusCode.LOADED)))
    st1 = apply(vm)
    assert st1.available and st1.active_model_state is ModelState.LOADED
    assert (st1.total_copies, st1.failed_copies) == (2, 0)


def test_failed_load_records_location_and_time_from_copy() -> None:
    vm = VModelView(VModelStatusCode.DEFINED, "a", "a",
                    model(ModelStatusCode.LOADING_FAILED, CopyInfo("abcdefghijkl", ModelStatusCode.LOADING_FAILED, 1714564800123),
                          errors=("boom: no such key",)))
    st1 = apply(vm)
    assert not st1.available and st1.active_model_state is ModelState.FAILED_TO_LOAD
    f = st1.last_failure_info
    assert f is not None and f.reason is FailureReason.MODEL_LOAD_FAILED and f.message == "boom: no such key"
    assert f.location == "abcdefghijkl" and f.model_id == "a" and f.time == datetime.fromtimestamp(1714564800, tz=UTC)
    assert st1.failed_copies == 1 and st1.total_copies == 1


def no_home(label: str, constraint: str) -> ModelStatusView:
    return model(ModelStatusCode.LOADING_FAILED,
                 errors=(f"{s.NO_HOME_PREFIX}{label}: [{constraint}]",))


def test_decoding_of_no_home_errors() -> None:
    assert s.decode_model_state(no_home("mt:sklearn", "mt:sklearn")) == (
        ModelState.LOADING, FailureReason.RUNTIME_UNHEALTHY, s.MSG_WAITING_SUPPORTING)
    assert s.decode_model_state(no_home("rt:foo", "_no_runtime")) == (
        ModelState.FAILED_TO_LOAD, FailureReason.RUNTIME_NOT_RECOGNIZED, s.MSG_NOT_RECOGNIZED)
    assert s.decode_model_state(no_home("_default", "_no_runtime")) == (
        ModelState.FAILED_TO_LOAD, FailureReason.NO_SUPPORTING_RUNTIME, s.MSG_NO_SUPPORTING)
    assert s.decode_model_state(None) == (ModelState.PENDING, None, "")


def test_waiting_for_runtime_is_not_available_and_time_is_sticky() -> None:
    vm = VModelView(VModelStatusCode.DEFINED, "a", "a", no_home("mt:sklearn", "mt:sklearn"))
    st1 = apply(vm)
    assert st1.waiting_for_runtime and not st1.available and st1.active_model_state is ModelState.LOADING
    assert st1.last_failure_info is not None and st1.last_failure_info.time == NOW
    st2 = apply(vm, st1, NOW + timedelta(seconds=10))
    assert st2.last_failure_info is not None and st2.last_failure_info.time == NOW          # < 20 s: kept
    st3 = apply(vm, st2, NOW + timedelta(seconds=25))
    assert st3.last_failure_info is not None and st3.last_failure_info.time == NOW + timedelta(seconds=25)
    # retry back in plain Loading while waiting: the failure is kept
    st4 = apply(VModelView(VModelStatusCode.DEFINED, "a", "a", model(ModelStatusCode.LOADING)), st3)
    assert st4.last_failure_info == st3.last_failure_info
    assert s.requeue_after(st4, scheduler_reachable=True) == 3.0


def test_transition_in_progress_then_blocked() -> None:
    active = model(ModelStatusCode.LOADED, CopyInfo("p1", ModelStatusCode.LOADED))
    st1 = apply(VModelView(VModelStatusCode.TRANSITIONING, "old", "new", active, model(ModelStatusCode.LOADING,
                                                                                        CopyInfo("p2", ModelStatusCode.LOADING))))
    assert (st1.available, st1.active_model_state, st1.target_model_state, st1.transition_status) == (
        True, ModelState.LOADED, ModelState.LOADING, TransitionStatus.IN_PROGRESS)
    assert st1.total_copies == 2
    failed_target = model(ModelStatusCode.LOADING_FAILED, CopyInfo("p2", ModelStatusCode.LOADING_FAILED, 1000), errors=("bad path",))
    st2 = apply(VModelView(VModelStatusCode.TRANSITION_FAILED, "old", "new", active, failed_target), st1)
    assert (st2.available, st2.target_model_state, st2.transition_status) == (
        True, ModelState.FAILED_TO_LOAD, TransitionStatus.BLOCKED_BY_FAILED_LOAD)
    assert st2.last_failure_info is not None and st2.last_failure_info.model_id == "new"
    # blocked but the target is loading again (nowhere-to-load converted back): InProgress
    st3 = apply(VModelView(VModelStatusCode.TRANSITION_FAILED, "old", "new", active, model(ModelStatusCode.LOADING)), st2)
    assert st3.transition_status is TransitionStatus.IN_PROGRESS
    # done
    st4 = apply(VModelView(VModelStatusCode.DEFINED, "new", "new", active), st3)
    assert (st4.target_model_state, st4.transition_status, st4.last_failure_info) == (ModelState.EMPTY, TransitionStatus.UP_TO_DATE, None)


def test_invalid_spec_and_unreachable_and_other_owner() -> None:
    st1 = s.invalid_spec_status(PredictorStatus(), message="Only one of spec.path and spec.storage.path can be specified",
                                model_id="m__ksp-1", vmodel=None, now=NOW, grpc_endpoint=GRPC, http_endpoint=HTTP)
    assert st1.transition_status is TransitionStatus.INVALID_SPEC
    assert st1.last_failure_info is not None and st1.last_failure_info.reason is FailureReason.INVALID_PREDICTOR_SPEC
    assert st1.available  # Pending counts as available upstream (active state set, not failed)
    st2 = s.scheduler_unreachable_status(PredictorStatus(), model_id="m", now=NOW)
    assert st2.waiting_for_runtime and not st2.available
    assert st2.last_failure_info is not None and st2.last_failure_info.message == s.MSG_WAITING_ANY
    assert s.requeue_after(st2, scheduler_reachable=False) == 3.0
    st3 = s.other_owner_status(PredictorStatus(), now=NOW)
    assert st3.last_failure_info is not None and st3.last_failure_info.message == s.MSG_OTHER_SOURCE


def test_load_now_rule() -> None:
    assert s.load_now(PredictorStatus(), deleting=False)
    assert not s.load_now(PredictorStatus(), deleting=True)
    assert not s.load_now(PredictorStatus(active_model_state=ModelState.LOADED), deleting=False)
    assert s.load_now(PredictorStatus(active_model_state=ModelState.LOADED, target_model_state=ModelState.LOADING), deleting=False)


def test_isvc_status_document() -> None:
    st1 = apply(VModelView(VModelStatusCode.DEFINED, "a", "a", model(ModelStatusCode.LOADED, CopyInfo("p", ModelStatusCode.LOADED))))
    doc = sj.to_isvc_status(st1, previous_raw={}, now=NOW)
    assert doc["url"] == GRPC
    assert doc["components"]["predictor"] == {"url": GRPC, "grpcUrl": GRPC, "restUrl": HTTP}
    assert {c["type"]: c["status"] for c in doc["conditions"]} == {"PredictorReady": "True", "Ready": "True"}
    assert doc["modelStatus"]["states"] == {"activeModelState": "Loaded", "targetModelState": ""}
    assert doc["modelStatus"]["copies"] == {"failedCopies": 0, "totalCopies": 1}
    back = sj.from_isvc_status(doc)
    assert back.active_model_state is ModelState.LOADED and back.available
    later = sj.to_isvc_status(st1, previous_raw=doc, now=NOW + timedelta(minutes=5))
    assert later["conditions"][0]["lastTransitionTime"] == doc["conditions"][0]["lastTransitionTime"]
    down = sj.to_isvc_status(PredictorStatus(active_model_state=ModelState.FAILED_TO_LOAD), previous_raw=doc, now=NOW)
    assert down["url"] is None and {c["status"] for c in down["conditions"]} == {"False"}


def test_predictor_status_roundtrip() -> None:
    st1 = apply(VModelView(VModelStatusCode.DEFINED, "a", "a", no_home("mt:x", "mt:x")))
    assert sj.from_predictor_status(sj.to_predictor_status(st1)) == st1


codes = st.sampled_from(list(ModelStatusCode))
copies = st.lists(st.builds(CopyInfo, st.text(max_size=5), codes, st.integers(0, 2**41)), max_size=4)
views = st.none() | st.builds(ModelStatusView, codes, st.lists(st.text(max_size=80), max_size=2).map(tuple), copies.map(tuple))


@given(st.sampled_from(list(VModelStatusCode)), st.booleans(), views, views)
def test_status_invariants(vcode: VModelStatusCode, same: bool, active: ModelStatusView | None, target: ModelStatusView | None) -> None:
    vm = VModelView(vcode, "a", "a" if same else "b", active, target)
    out = apply(vm)
    assert out.available == (out.active_model_state not in (ModelState.EMPTY, ModelState.FAILED_TO_LOAD) and not out.waiting_for_runtime)
    if same:
        assert out.target_model_state is ModelState.EMPTY
    assert 0 <= out.failed_copies <= out.total_copies
    doc = sj.to_predictor_status(out)
    assert sj.from_predictor_status(doc) == out
