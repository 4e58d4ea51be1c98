"""Scheduler settings (env prefix MESHSERVE_SCHEDULER_; shared infra also from MESHSERVE_*)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshserve.common.settings import TLSSettings, shared
from meshserve.scheduler.models import EvictionPolicy, PlacementConfig
from meshserve.scheduler.shift import ShiftConfig

_PLACEMENT = PlacementConfig()
"""Placement's defaults: the settings that tune placement start from them."""
_SHIFT = ShiftConfig()


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MESHSERVE_SCHEDULER_", env_nested_delimiter="__", populate_by_name=True
    )

    grpc_address: str = "0.0.0.0:8034"
    admin_host: str = "0.0.0.0"
    admin_port: int = 8080
    metrics_port: int = 2112
    per_model_metrics: bool = False           # label ModelMesh's histograms with modelId/vModelId (upstream's per_model_metrics; cardinality)
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=shared("redis_url", "scheduler")
    )
    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/meshserve",
        validation_alias=shared("database_url", "scheduler"),
    )
    key_prefix: str = "ms"
    admin_token: SecretStr | None = None     # when set, admin mutations need "Authorization: Bearer <token>"
    tls: TLSSettings = TLSSettings()          # server side of :8034
    puller_tls: TLSSettings = TLSSettings()   # client side towards pullers
    eviction_policy: EvictionPolicy = _PLACEMENT.policy
    load_timeout_seconds: float = 90.0
    pod_timeout_seconds: float = 15.0         # no heartbeat for this long: pod is gone
    heartbeat_interval_seconds: float = 2.0
    failure_backoff_seconds: float = 900.0    # ModelMesh's MM_LOAD_FAILURE_EXPIRY_TIME_MS
    min_residency_seconds: float = _PLACEMENT.min_residency_seconds
    usage_half_life_seconds: float = Field(default=_PLACEMENT.usage_half_life_seconds, gt=0)   # usage-weighted: a count halves per this much idle time
    eviction_candidates: int = Field(default=_PLACEMENT.eviction_candidates, ge=1)            # pods compared for the cheapest victims
    stale_after_intervals: float = Field(default=_PLACEMENT.stale_after_intervals, ge=0)       # usage-weighted: unused for this many expected gaps = cold (0: off)
    stale_min_seconds: float = Field(default=_PLACEMENT.stale_min_seconds, ge=0)          # ... and never sooner than this after its last reported use
    shift_detection: bool = True              # usage-weighted: forget the request counts when the popular set moves (shift.py)
    shift_window_seconds: float = Field(default=_SHIFT.window_seconds, gt=0)   # ... judged on the miss ratio over this window
    shift_ratio: float = Field(default=_SHIFT.ratio, ge=1)      # ... above this many times its long-run average
    shift_gap: float = Field(default=_SHIFT.gap, ge=0)          # ... and this much above it
    shift_cooldown_seconds: float = Field(default=_SHIFT.cooldown_seconds, ge=0)   # ... at most once per this long
    scale_up_rpm_threshold: float = 2000.0    # ModelMesh's MM_SCALEUP_RPM_THRESHOLD
    scaling_interval_seconds: float = 5.0
    vmodel_retire_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "After a vmodel flips to a new model, keep the model it replaced registered this long before "
            "unregistering it (when the vmodel auto-deletes its models): a request Envoy already routed to "
            "the old model id may still fall over to the router's slow path, which asks for that id. "
            "0 unregisters at once."
        ),
    )
    runtime_wait_seconds: float = 30.0        # wait this long for a compatible pod (scale from zero)
    log_level: str = "INFO"
    log_json: bool = False

    def shift_config(self) -> ShiftConfig:
        """The shift detector's rules from the settings (the rest are ShiftConfig's defaults)."""
        return ShiftConfig(
            window_seconds=self.shift_window_seconds,
            ratio=self.shift_ratio,
            gap=self.shift_gap,
            cooldown_seconds=self.shift_cooldown_seconds,
        )
