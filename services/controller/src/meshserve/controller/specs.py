"""InferenceService and Predictor CRs -> one normalised `ModelSpec`, with upstream's validation.

Owns: deciding whether an InferenceService is ours (annotation
`serving.kserve.io/deploymentMode: ModelMesh`), reading the new (`spec.predictor.model`) and old
(`spec.predictor.<framework>`) forms, the storage rules (storageUri vs storage.path, secretKey and
schemaPath annotations, URI-derived parameters override `storage.parameters`), the Predictor
validation messages of ModelMesh Serving, and the concrete model id.

Pure: input is the CR as a dict (what the API returns), output a frozen `PredictorCR`. An invalid
spec is not an exception: it becomes `PredictorCR(spec=None, error=<message>)` so the caller can
write `transitionStatus: InvalidSpec` / `InvalidPredictorSpec` with that message.

Invariants:
* `model_id` depends only on the name, the source and the normalised spec: two CRs that mean the
  same model (e.g. `storageUri: s3://b/p` vs `storage.parameters.bucket: b` + `path: p`) share it;
  any change to what is loaded gives a new id.
* `vmodel_id` is the CR name (ModelMesh's rule); the owner is `isvc` or `ksp`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshserve.common import labels as type_labels
from meshserve.common import modelid
from meshserve.common.errors import InvalidArgument
from meshserve.common.storage import parse_storage_uri

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
MODELMESH_MODE = "ModelMesh"
RUNTIME_ANNOTATION = "serving.kserve.io/servingRuntime"
SECRET_KEY_ANNOTATION = "serving.kserve.io/secretKey"
SCHEMA_PATH_ANNOTATION = "serving.kserve.io/schemaPath"
FRAMEWORKS = ("xgboost", "lightgbm", "sklearn", "tensorflow", "onnx", "pytorch", "triton", "pmml")
"""Old-form predictor keys, in the order upstream checks them."""

KIND_ISVC = "InferenceService"
KIND_PREDICTOR = "Predictor"

MSG_PATH_BOTH = "Only one of spec.path and spec.storage.path can be specified"
MSG_SCHEMA_BOTH = "Only one of spec.schemaPath and spec.storage.schemaPath can be specified"
MSG_PVC = "spec.storage.PersistentVolumeClaim is not supported"
MSG_S3_MIXED = "spec.storage.s3 cannot be specified with any other keys in spec.storage"


@dataclass(frozen=True)
class ModelSpec:
    """What to load and where it may run: the same for both CR kinds."""

    model_type: str
    model_type_version: str = ""
    runtime: str = ""
    protocol_version: str = ""
    storage_key: str = ""
    storage_path: str = ""
    schema_path: str = ""
    storage_params: tuple[tuple[str, str], ...] = ()
    """Sorted (key, value) pairs, e.g. (("bucket", "b"), ("type", "s3"))."""

    def canonical(self) -> dict[str, Any]:
        return {
            "model_type": {"name": self.model_type, "version": self.model_type_version},
            "runtime": self.runtime,
            "protocol_version": self.protocol_version,
            "storage_key": self.storage_key,
            "storage_path": self.storage_path,
            "schema_path": self.schema_path,
            "storage_params": dict(self.storage_params),
        }

    def labels(self) -> frozenset[str]:
        """Labels a runtime must carry to serve this model (upstream `GetPredictorTypeLabel`)."""
        return type_labels.model_labels(
            model_type=self.model_type,
            model_type_version=self.model_type_version,
            runtime=self.runtime,
            protocol_version=self.protocol_version,
        )

    def type_label(self) -> str:
        """`rt:<runtime>` or `mt:<fmt>[:<ver>]`, plus `|pv:<protocol>`: ModelMesh's ModelInfo.type."""
        main = f"rt:{self.runtime}" if self.runtime else (
            f"mt:{self.model_type}:{self.model_type_version}" if self.model_type_version else f"mt:{self.model_type}"
        )
        return f"{main}|pv:{self.protocol_version}" if self.protocol_version else main


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class PredictorCR:
    """A parsed InferenceService or Predictor: valid (`spec`) or invalid (`error`)."""

    ref: ObjectRef
    source: str
    uid: str
    generation: int
    deleting: bool
    spec: ModelSpec | None
    error: str
    model_id: str

    @property
    def vmodel_id(self) -> str:
        return self.ref.name

    @property
    def valid(self) -> bool:
        return self.spec is not None


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata") or {}
    return meta if isinstance(meta, Mapping) else {}


def _ref(obj: Mapping[str, Any], kind: str) -> ObjectRef:
    meta = _meta(obj)
    return ObjectRef(kind=kind, namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""))


def _common(obj: Mapping[str, Any]) -> tuple[str, int, bool]:
    meta = _meta(obj)
    generation = meta.get("generation")
    # the API server owns it (an integer); anything else a local store holds counts as 0
    generation = generation if isinstance(generation, int) and not isinstance(generation, bool) else 0
    return str(meta.get("uid") or ""), generation, bool(meta.get("deletionTimestamp"))


def _mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else {} (a CR the API server did not check may hold anything)."""
    return value if isinstance(value, Mapping) else {}


def _opt_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _params(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _build(*, ref: ObjectRef, source: str, obj: Mapping[str, Any], spec: ModelSpec | None, error: str) -> PredictorCR:
    uid, generation, deleting = _common(obj)
    hashed: Any = spec.canonical() if spec is not None else obj.get("spec")
    return PredictorCR(
        ref=ref, source=source, uid=uid, generation=generation, deleting=deleting, spec=spec, error=error,
        model_id=modelid.model_id(name=ref.name, source=source, spec=hashed),
    )


def is_modelmesh_isvc(obj: Mapping[str, Any]) -> bool:
    annotations = _meta(obj).get("annotations") or {}
    return isinstance(annotations, Mapping) and annotations.get(DEPLOYMENT_MODE_ANNOTATION) == MODELMESH_MODE


def parse_inference_service(obj: Mapping[str, Any]) -> PredictorCR | None:
    """Parse an InferenceService; None when it is not in ModelMesh mode (not ours: ignore it)."""
    if not is_modelmesh_isvc(obj):
        return None
    ref = _ref(obj, KIND_ISVC)
    source = modelid.SOURCE_ISVC
    try:
        spec = _isvc_spec(obj, ref)
    except InvalidArgument as err:
        return _build(ref=ref, source=source, obj=obj, spec=None, error=err.message)
    return _build(ref=ref, source=source, obj=obj, spec=spec, error="")


def _isvc_spec(obj: Mapping[str, Any], ref: ObjectRef) -> ModelSpec:
    annotations = _mapping(_meta(obj).get("annotations"))
    nname = f"{ref.namespace}/{ref.name}"
    predictor = _mapping(obj.get("spec")).get("predictor")
    if not isinstance(predictor, Mapping):
        raise InvalidArgument(f"the InferenceService {nname} has no spec.predictor")
    frameworks = [fw for fw in FRAMEWORKS if isinstance(predictor.get(fw), Mapping)]
    model = predictor.get("model")
    if isinstance(model, Mapping):
        if frameworks:
            raise InvalidArgument(
                f"the InferenceService {nname} cannot have both spec.predictor.model and spec.predictor.{frameworks[0]}"
            )
        if RUNTIME_ANNOTATION in annotations:
            raise InvalidArgument(
                f"the InferenceService {nname} cannot use the {RUNTIME_ANNOTATION} annotation with "
                "spec.predictor.model; set spec.predictor.model.runtime instead"
            )
        fmt = model.get("modelFormat")
        if not isinstance(fmt, Mapping) or not _opt_str(fmt.get("name")):
            raise InvalidArgument(f"the InferenceService {nname} must set spec.predictor.model.modelFormat.name")
        component: Mapping[str, Any] = model
        model_type, version = str(fmt["name"]), _opt_str(fmt.get("version"))
        runtime = _opt_str(model.get("runtime"))
    elif frameworks:
        if len(frameworks) > 1:
            raise InvalidArgument(
                f"the InferenceService {nname} must have exactly one predictor framework, found: {', '.join(frameworks)}"
            )
        component = predictor[frameworks[0]]
        model_type, version = frameworks[0], ""
        runtime = _opt_str(annotations.get(RUNTIME_ANNOTATION))
    else:
        raise InvalidArgument("No valid InferenceService predictor framework found")

    storage = component.get("storage")
    storage = storage if isinstance(storage, Mapping) else {}
    uri = _opt_str(component.get("storageUri"))
    params = _params(storage.get("parameters"))
    if uri:
        if _opt_str(storage.get("path")):
            raise InvalidArgument(f"the InferenceService {nname} cannot have both the storageUri and the storage.path")
        location = parse_storage_uri(uri, params)   # URI-derived parameters win (upstream)
        path, params = location.path, dict(location.params)
    else:
        path = _opt_str(storage.get("path"))
        if not path:
            raise InvalidArgument(f"the InferenceService {nname} must have either the storageUri or the storage.path")
    key = _opt_str(storage.get("key")) or _opt_str(annotations.get(SECRET_KEY_ANNOTATION))
    schema = _opt_str(storage.get("schemaPath")) or _opt_str(annotations.get(SCHEMA_PATH_ANNOTATION))
    return ModelSpec(
        model_type=model_type, model_type_version=version, runtime=runtime,
        protocol_version=_opt_str(component.get("protocolVersion")),
        storage_key=key, storage_path=path, schema_path=schema, storage_params=tuple(sorted(params.items())),
    )


def parse_predictor(obj: Mapping[str, Any]) -> PredictorCR:
    """Parse a v1alpha1 Predictor, applying upstream's `validatePredictor` rules."""
    ref = _ref(obj, KIND_PREDICTOR)
    source = modelid.SOURCE_PREDICTOR
    try:
        model_spec = _predictor_spec(_mapping(obj.get("spec")))
    except InvalidArgument as err:
        return _build(ref=ref, source=source, obj=obj, spec=None, error=err.message)
    return _build(ref=ref, source=source, obj=obj, spec=model_spec, error="")


def _predictor_spec(spec: Mapping[str, Any]) -> ModelSpec:
    storage = spec.get("storage")
    storage = storage if isinstance(storage, Mapping) else {}
    if _opt_str(spec.get("path")) and _opt_str(storage.get("path")):
        raise InvalidArgument(MSG_PATH_BOTH)
    if _opt_str(spec.get("schemaPath")) and _opt_str(storage.get("schemaPath")):
        raise InvalidArgument(MSG_SCHEMA_BOTH)
    if storage.get("persistentVolumeClaim") is not None:
        raise InvalidArgument(MSG_PVC)
    key = _opt_str(storage.get("key"))
    params = _params(storage.get("parameters"))
    s3 = storage.get("s3")
    if s3 is not None:
        if any(k != "s3" and storage.get(k) not in (None, "", {}) for k in storage):
            raise InvalidArgument(MSG_S3_MIXED)
        s3 = s3 if isinstance(s3, Mapping) else {}
        key = _opt_str(s3.get("secretKey"))
        if _opt_str(s3.get("bucket")):
            params["bucket"] = str(s3["bucket"])
    model_type = spec.get("modelType")
    if not isinstance(model_type, Mapping) or not _opt_str(model_type.get("name")):
        raise InvalidArgument("spec.modelType.name is required")
    runtime = spec.get("runtime")
    return ModelSpec(
        model_type=str(model_type["name"]),
        model_type_version=_opt_str(model_type.get("version")),
        runtime=_opt_str(runtime.get("name")) if isinstance(runtime, Mapping) else "",
        protocol_version=_opt_str(spec.get("protocolVersion")),
        storage_key=key,
        storage_path=_opt_str(spec.get("path")) or _opt_str(storage.get("path")),
        schema_path=_opt_str(spec.get("schemaPath")) or _opt_str(storage.get("schemaPath")),
        storage_params=tuple(sorted(params.items())),
    )
