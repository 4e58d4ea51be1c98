"""Controller settings (env prefix MESHSERVE_CONTROLLER_; the scheduler address also from
MESHSERVE_SCHEDULER_ADDRESS), on the common `ServiceSettings` base.

Each field's docstring is its description in the README's configuration table
(`scripts/settings_table.py`). Loaded once in `__main__` and passed down. May import pydantic
and `meshserve.common.settings` only.
"""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from meshserve.common.settings import InternalTLS, ServiceSettings, TLSSettings, shared


class Mode(enum.StrEnum):
    KUBERNETES = "kubernetes"
    """Watch the CRs through the Kubernetes API; runtimes are Deployments."""
    LOCAL = "local"
    """Resources come from the local store (`meshserve apply -f`); runtimes per `runtime_provider`."""


class RuntimeProvider(enum.StrEnum):
    KUBERNETES = "kubernetes"
    PROCESS = "process"
    """Local mode: start MLServer + puller processes on this machine."""
    STATIC = "static"
    """Runtime pods are run by someone else (docker compose); never start or stop them."""


class ControllerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_CONTROLLER_")

    mode: Mode = Mode.KUBERNETES
    """Where resources come from: `kubernetes` (the CRs through the Kubernetes API) or `local`
    (resources from `meshserve apply`, runtime pods as processes)."""
    runtime_provider: RuntimeProvider = RuntimeProvider.KUBERNETES
    """Who runs runtime pods: `kubernetes` (Deployments), `process` (local processes; the default
    in local mode) or `static` (someone else, e.g. docker compose)."""
    namespace: str = "modelmesh-serving"
    """The controller's own namespace: served in both modes; the model-serving-config ConfigMap is read from it."""
    namespace_scope: bool = Field(
        default=True, validation_alias=AliasChoices("MESHSERVE_CONTROLLER_NAMESPACE_SCOPE", "NAMESPACE_SCOPE")
    )
    """Kubernetes mode: serve `namespace` only (true, upstream's default), or, false, cluster
    scope: also every namespace labelled `modelmesh-enabled: "true"` (upstream's
    `NAMESPACE_SCOPE`), with ids prefixed `<namespace>__` at the scheduler and runtime pods and
    a router in each namespace."""
    router_image: str = "meshserve/router:0.1.0"
    """Kubernetes mode: the image of the router Deployment the controller runs in each served
    namespace (Service `<inferenceServiceName>`, configured from model-serving-config)."""
    router_replicas: int = Field(default=2, ge=0)
    """Kubernetes mode: replicas of each namespace's router Deployment."""
    config_map_name: str = "model-serving-config"
    """The user ConfigMap (key config.yaml), read from `namespace`."""
    scheduler_address: str = Field(default="127.0.0.1:8034", validation_alias=shared("scheduler_address", "controller"))
    """The scheduler's internal gRPC endpoint."""
    scheduler_tls: InternalTLS = TLSSettings()
    """TLS of the calls to the scheduler; what is unset comes from `MESHSERVE_INTERNAL_TLS__*`."""
    scheduler_timeout_seconds: float = 10.0
    """Deadline of each scheduler call (upstream GrpcRequestTimeout)."""
    kubeconfig: Path | None = None
    """Kubernetes mode, out of cluster: a kubeconfig file; in-cluster config is used when unset."""
    watch_timeout_seconds: int = 300
    """Server-side timeout of one watch request; the watch is re-opened from the last resourceVersion."""
    resync_seconds: float | None = None
    """Re-read every CR this often (local mode defaults to 30 s; a safety net behind the scheduler's route events)."""
    # --- local mode -------------------------------------------------------------------------------
    admin_url: str = Field(
        default="http://127.0.0.1:8080", validation_alias=AliasChoices("MESHSERVE_CONTROLLER_ADMIN_URL", "MESHSERVE_ADMIN_URL")
    )
    """The scheduler's admin REST API: local mode's resource store, and the pressure reads and
    drains of the model-pressure autoscaler (both modes)."""
    admin_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "MESHSERVE_CONTROLLER_ADMIN_TOKEN", "MESHSERVE_ADMIN_TOKEN", "MESHSERVE_SCHEDULER_ADMIN_TOKEN"
        ),
    )
    """Bearer token for the status writes, when the scheduler requires one."""
    local_root: Path = Path(".dev")
    """Local mode (process provider): runtime pods' folders and logs go under this folder; its
    `storage-config/` holds the storage keys (as the local stack writes them)."""
    local_pod_capacity_bytes: int = 0
    """Model memory per local runtime pod; 0: from the runtime's container memory limits."""
    local_provider: str = "meshserve.cli.runtimes_local:ProcessRuntimes"
    """`module:factory` of the process provider (called with the settings; lives with the local
    stack's process code so the controller package does not depend on it)."""
    autoscale: bool = True
    """Scale each runtime's pods on model pressure between its `serving.kserve.io/min-scale`
    and `max-scale` annotations (missing: its planned replicas), from the scheduler's
    `GET /v1/runtimes/{name}/pressure` (at `admin_url`); a pod is drained before it goes. Local
    mode (process provider), and Kubernetes mode for runtimes without an `autoscalerClass`
    (the Deployment's replicas; the drained pod gets the lowest `pod-deletion-cost`)."""
    autoscale_interval_seconds: float = Field(default=10.0, gt=0)
    """How often the model-pressure autoscaler reads each runtime's pressure."""
    autoscale_pressure_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Autoscaler: the window each pressure reading's eviction rate covers."""
    autoscale_up_evicted_fraction: float = Field(default=0.5, gt=0)
    """Autoscaler: churn = evicted bytes per minute of at least this fraction of one pod's model memory."""
    autoscale_up_window_seconds: float = Field(default=120.0, gt=0)
    """Autoscaler: churn must last this long (every reading) before a pod is added."""
    autoscale_down_idle_seconds: float = Field(default=300.0, ge=0)
    """Autoscaler: capacity counts as unused while the least recently used copy has been idle this long and nothing is evicted."""
    autoscale_down_window_seconds: float = Field(default=600.0, gt=0)
    """Autoscaler: capacity must stay unused this long (every reading) before a pod is drained and removed."""
    autoscale_cooldown_seconds: float = Field(default=300.0, ge=0)
    """Autoscaler: no change within this long of the previous one."""
    internal_tls_secret: str = ""
    """Kubernetes mode: a TLS Secret (keys `tls.crt`, `tls.key`, `ca.crt`; in every served
    namespace) mounted into the runtime pods' puller and each router at
    `/etc/meshserve/internal-tls`, with `MESHSERVE_INTERNAL_TLS__*` pointing at it: their
    internal gRPC hops on mutual TLS. Only referenced, never read. "" (default): off."""
    internal_tls_server_name: str = ""
    """Kubernetes mode, with `internal_tls_secret`: `MESHSERVE_INTERNAL_TLS__SERVER_NAME` of
    those pods (the name the peers' certificate carries, for peers dialed by IP). "": unset."""
    health_port: int = 8081
    """`/healthz` + `/readyz` (ready: every informer has listed, until shutdown starts)."""
    tls: TLSSettings = TLSSettings()
    """Not used: the controller serves no gRPC (its scheduler calls use `scheduler_tls`)."""

    def effective(self) -> ControllerSettings:
        """Local-mode defaults: namespace `default` (what `meshserve apply` uses), process runtimes, resync 30 s."""
        if self.mode is not Mode.LOCAL:
            return self
        update: dict[str, object] = {}
        if "namespace" not in self.model_fields_set:
            update["namespace"] = "default"
        if self.runtime_provider is RuntimeProvider.KUBERNETES:
            update["runtime_provider"] = RuntimeProvider.PROCESS
        if self.resync_seconds is None:
            update["resync_seconds"] = 30.0
        return self.model_copy(update=update)
