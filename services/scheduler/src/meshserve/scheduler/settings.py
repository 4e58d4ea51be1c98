"""Scheduler settings (env prefix `MESHSERVE_SCHEDULER_`), on the common `ServiceSettings` base.

Redis and Postgres are also read from the unprefixed `MESHSERVE_REDIS_URL` / `MESHSERVE_DATABASE_URL`
(`shared`). Each field's docstring is its description in the README's configuration table
(`scripts/settings_table.py`). Loaded once in `__main__` and passed down. May import pydantic,
`meshserve.common.settings` and the scheduler's own config dataclasses (models, shift).
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from meshserve.common.settings import InternalTLS, ServiceSettings, TLSSettings, shared
from meshserve.scheduler.models import EvictionPolicy, PlacementConfig
from meshserve.scheduler.shift import ShiftConfig

_PLACEMENT = PlacementConfig()
"""Placement's defaults: the settings that tune placement start from them."""
_SHIFT = ShiftConfig()

STOP_GRACE_SECONDS = 12.0
"""How long a stop waits for the background loops to end once cancelled: psycopg answers a
cancelled query by cancelling it on the server and waiting for the connection to be clean
(up to 5 s + 5 s), so the leader loop, cancelled mid-query, may take that long; less than
a pod's default terminationGracePeriodSeconds (30)."""


class SchedulerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_SCHEDULER_")

    grpc_address: str = "0.0.0.0:8034"
    """Internal gRPC address (meshserve.v1.Scheduler; TLS from `tls`)."""
    tls: InternalTLS = TLSSettings()
    """TLS of the internal gRPC server (cert_file + key_file; ca_file requires client certificates);
    what is unset comes from `MESHSERVE_INTERNAL_TLS__*` (unset there too: plaintext)."""
    admin_host: str = "0.0.0.0"
    """Admin HTTP API host."""
    admin_port: int = 8080
    """Admin HTTP API port (REST management API, placement page)."""
    per_model_metrics: bool = False
    """Label ModelMesh's histograms with modelId/vModelId (upstream's per_model_metrics; cardinality)."""
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=shared("redis_url", "scheduler")
    )
    """Redis (live state); also read from the unprefixed `MESHSERVE_REDIS_URL`."""
    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/meshserve",
        validation_alias=shared("database_url", "scheduler"),
    )
    """Postgres (the registry); also read from the unprefixed `MESHSERVE_DATABASE_URL`."""
    key_prefix: str = "ms"
    """Prefix of every Redis key."""
    admin_token: SecretStr | None = None
    """When set, admin mutations need `Authorization: Bearer <token>`."""
    admin_read_token: SecretStr | None = None
    """When set, admin API reads (`GET /v1/...`) need `Authorization: Bearer <token>` with this token or the admin token; health probes, the OpenAPI document and the placement page's files stay open."""
    puller_tls: InternalTLS = TLSSettings()
    """TLS of the client side towards the pullers; what is unset comes from `MESHSERVE_INTERNAL_TLS__*`."""
    eviction_policy: EvictionPolicy = _PLACEMENT.policy
    """Which copies to evict when a pod has no room: `usage-weighted` or `lru`."""
    load_timeout_seconds: float = 90.0
    """Per load."""
    pod_timeout_seconds: float = 15.0
    """A pod without heartbeat this long is gone."""
    heartbeat_interval_seconds: float = 2.0
    """How often pullers are told to heartbeat (the leader lease is 3x it, at least 3 s)."""
    pod_probe_after_seconds: float = Field(default=3.0, gt=0)
    """A pod whose last heartbeat is older than this is probed by the leader (its puller's
    RuntimeStatus): a refused connection or a model server not ready drops it at once (dead),
    so its copies are re-placed within seconds instead of after `pod_timeout_seconds`."""
    pod_probe_timeout_seconds: float = Field(default=1.0, gt=0)
    """... the probe's deadline: a puller that does not answer within it is taken as hung."""
    pod_unresponsive_seconds: float = Field(default=6.0, gt=0)
    """A pod whose probes go unanswered (hung, e.g. stopped: not dead) is dropped once its last
    heartbeat is this old, so requests are routed around it; when it comes back, the copies it
    still holds are kept only where the model has no other copy (the rest are unloaded there)."""
    failure_backoff_seconds: float = 900.0
    """A failed load is not retried on that pod (or, for bad files, anywhere) for this long
    (ModelMesh's MM_LOAD_FAILURE_EXPIRY_TIME_MS)."""
    min_residency_seconds: float = _PLACEMENT.min_residency_seconds
    """A copy loaded more recently is never evicted (thrash control)."""
    usage_half_life_seconds: float = Field(default=_PLACEMENT.usage_half_life_seconds, gt=0)
    """Usage-weighted: a model's request count halves per this much idle time."""
    eviction_candidates: int = Field(default=_PLACEMENT.eviction_candidates, ge=1)
    """Pods compared for the cheapest victims when no pod has room (1 = just the smallest deficit)."""
    stale_after_intervals: float = Field(default=_PLACEMENT.stale_after_intervals, ge=0)
    """Usage-weighted: unused for this many of its expected gaps between requests = cold (0: off)."""
    stale_min_seconds: float = Field(default=_PLACEMENT.stale_min_seconds, ge=0)
    """... and never sooner than this after its last reported use."""
    shift_detection: bool = True
    """Usage-weighted: forget the request counts when the popular set moves (shift.py)."""
    shift_window_seconds: float = Field(default=_SHIFT.window_seconds, gt=0)
    """... judged on the miss ratio over this window."""
    shift_ratio: float = Field(default=_SHIFT.ratio, ge=1)
    """... above this many times its long-run average."""
    shift_gap: float = Field(default=_SHIFT.gap, ge=0)
    """... and this much above it."""
    shift_cooldown_seconds: float = Field(default=_SHIFT.cooldown_seconds, ge=0)
    """... at most once per this long."""
    scale_up_rpm_threshold: float = 2000.0
    """Requests/minute per copy that add a copy (ModelMesh's MM_SCALEUP_RPM_THRESHOLD)."""
    scaling_interval_seconds: float = 5.0
    """How often the leader runs the scaler."""
    vmodel_retire_grace_seconds: float = Field(default=5.0, ge=0)
    """After a vmodel flips to a new model, keep the model it replaced registered this long before
    unregistering it (when the vmodel auto-deletes its models): a request Envoy already routed to
    the old model id may still fall over to the router's slow path, which asks for that id.
    0 unregisters at once."""
    runtime_wait_seconds: float = 30.0
    """How long a request waits for a compatible pod (scale from zero)."""
    event_retention_days: float = Field(default=7.0, ge=0)
    """The leader deletes events (`/v1/events`) older than this (0: no age limit)."""
    event_retention_max_rows: int = Field(default=100_000, ge=0)
    """... and all but the newest this many (0: no row limit)."""
    resource_tombstone_retention_hours: float = Field(default=24.0, ge=0)
    """Local mode: a deleted resource's tombstone (how a watch resuming from an older
    resourceVersion learns of the deletion) is deleted after this long; a watch from before the
    newest tombstone deleted answers 410 Gone and the watcher lists again (0: kept forever)."""
    retention_interval_seconds: float = Field(default=60.0, gt=0)
    """How often the leader applies the two retentions above (in batches of 1,000 rows, at most
    10 batches of each per pass)."""

    def shift_config(self) -> ShiftConfig:
        """The shift detector's rules from the settings (the rest are ShiftConfig's defaults)."""
        return ShiftConfig(
            window_seconds=self.shift_window_seconds,
            ratio=self.shift_ratio,
            gap=self.shift_gap,
            cooldown_seconds=self.shift_cooldown_seconds,
        )
