"""Which other RPCs the router forwards (MethodTable), its settings, and the metadata split."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from meshserve.router.other_rpcs import MethodTable, split_metadata
from meshserve.router.settings import UPSTREAM_ID_PATHS, RouterSettings

PREDICT = "tensorflow.serving.PredictionService/Predict"


def table(**kwargs: object) -> MethodTable:
    settings = RouterSettings(**kwargs)  # type: ignore[arg-type]
    return MethodTable(id_paths=settings.id_paths, allow_other_rpcs=settings.allow_other_rpcs, blocked=settings.blocked_methods)


def test_the_default_table_is_upstreams() -> None:
    assert RouterSettings().id_paths == {
        "inference.GRPCInferenceService/ModelInfer": [1],
        "inference.GRPCInferenceService/ModelMetadata": [1],
        "tensorflow.serving.PredictionService/Predict": [1, 1],
        "org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions": [1],
    } == UPSTREAM_ID_PATHS
    methods = table()
    assert methods.path(PREDICT) == (1, 1) and methods.path("acme.Echo/Echo") == ()


@pytest.mark.parametrize(
    ("method", "has_header", "words"),
    [
        pytest.param("acme.Echo/Echo", True, None, id="any-method-with-a-header"),
        pytest.param(PREDICT, False, None, id="known-method-names-its-model-in-the-body"),
        pytest.param("acme.Echo/Echo", False, "mm-vmodel-id header", id="unknown-without-header"),
        pytest.param("inference.GRPCInferenceService/RepositoryModelLoad", True, "not permitted", id="triton-repository"),
        pytest.param("inference.model_repository.ModelRepositoryService/RepositoryIndex", True, "not permitted", id="mlserver-repository"),
        pytest.param("mmesh.ModelRuntime/unloadModel", True, "not permitted", id="upstream-runtime-api"),
        pytest.param("meshserve.v1.Scheduler/EnsureLoaded", True, "not permitted", id="our-internal-api"),
    ],
)
def test_refusals(method: str, has_header: bool, words: str | None) -> None:
    refusal = table().refusal(method, has_header=has_header)
    assert refusal is None if words is None else (refusal is not None and words in refusal and method in refusal)


def test_without_allow_other_rpcs_only_the_table_is_forwarded() -> None:
    methods = table(allow_other_rpcs=False)
    assert "allow_other_rpcs is off" in (methods.refusal("acme.Echo/Echo", has_header=True) or "")
    assert methods.refusal(PREDICT, has_header=True) is None


def test_an_empty_path_forwards_without_rewriting_and_needs_a_header() -> None:
    methods = table(id_paths={"acme.Echo/Echo": []})
    assert methods.path("acme.Echo/Echo") == ()
    assert methods.refusal("acme.Echo/Echo", has_header=True) is None
    assert methods.refusal("acme.Echo/Echo", has_header=False) is not None


def test_the_table_comes_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSERVE_ROUTER_ID_PATHS", '{"/acme.Named/Call": [2, 1]}')
    monkeypatch.setenv("MESHSERVE_ROUTER_BLOCKED_METHODS", '["/acme.Admin/"]')
    settings = RouterSettings()
    assert settings.id_paths == {"acme.Named/Call": [2, 1]}  # the leading slash is optional
    assert settings.blocked_methods == ["acme.Admin/"]


@pytest.mark.parametrize(
    "paths",
    [{"acme.Named/Call": [0]}, {"acme.Named/Call": [1 << 29]}, {"NoMethod": [1]}, {"a/b/c": [1]}],
)
def test_invalid_tables_are_refused_at_start(paths: dict[str, list[int]]) -> None:
    with pytest.raises(ValidationError):
        RouterSettings(id_paths=paths)


def test_metadata_split_drops_pseudo_and_hop_by_hop_headers_and_keeps_the_rest() -> None:
    routing, forwarded = split_metadata(
        [(":authority", "x"), ("mm-vmodel-id", "vm"), ("mm-model-id-bin", b"m"), ("te", "trailers"),
         ("x-a", "1"), ("x-b-bin", b"\x00"), ("mm-balanced", "true"), ("user-agent", "grpc-python")]
    )
    assert routing == (("mm-vmodel-id", "vm"), ("mm-model-id-bin", b"m"))
    assert forwarded == (("x-a", "1"), ("x-b-bin", b"\x00"), ("mm-balanced", "true"), ("user-agent", "grpc-python"))
