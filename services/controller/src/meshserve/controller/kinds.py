"""The Kubernetes kinds the controller touches: group, version, plural, scope and API paths.

Pure: no client library here, so the pure modules (`watched`, `reconcile`) can name kinds
without loading kubernetes-asyncio; `kube` does the requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class ResourceKind:
    kind: str
    group: str          # "" for the core group
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, *, namespace: str = "", name: str = "", subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:   # a namespaced kind without one: every namespace
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


INFERENCE_SERVICE = ResourceKind("InferenceService", "serving.kserve.io", "v1beta1", "inferenceservices")
PREDICTOR = ResourceKind("Predictor", "serving.kserve.io", "v1alpha1", "predictors")
SERVING_RUNTIME = ResourceKind("ServingRuntime", "serving.kserve.io", "v1alpha1", "servingruntimes")
CLUSTER_SERVING_RUNTIME = ResourceKind(
    "ClusterServingRuntime", "serving.kserve.io", "v1alpha1", "clusterservingruntimes", namespaced=False
)
SECRET = ResourceKind("Secret", "", "v1", "secrets")
CONFIG_MAP = ResourceKind("ConfigMap", "", "v1", "configmaps")
DEPLOYMENT = ResourceKind("Deployment", "apps", "v1", "deployments")
EVENT = ResourceKind("Event", "", "v1", "events")
SERVICE = ResourceKind("Service", "", "v1", "services")
NAMESPACE = ResourceKind("Namespace", "", "v1", "namespaces", namespaced=False)
HORIZONTAL_POD_AUTOSCALER = ResourceKind("HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscalers")
