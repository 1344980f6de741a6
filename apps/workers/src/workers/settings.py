"""The workers' settings, from the environment (pydantic-settings).

The database's own settings (``DATABASE_URL``, timeouts, ``AUTOML_DATA_DIR``) stay
in :mod:`database.config`; ``STORAGE_URL`` is shared with the API, so both read and
write the same files.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from database.config import get_settings as get_database_settings
from database.limits import Limits
from database.models.enums import UserTier


def _default_data_dir() -> Path:
    return get_database_settings().data_dir


def cpu_count() -> int:
    """The cores this process may run on (its affinity, where the system tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="ignore", env_file=None, env_nested_delimiter="__", populate_by_name=True
    )

    #: Jobs run at once by one worker process (threads).
    slots: int = Field(default=2, alias="WORKER_SLOTS", ge=1, le=64)
    #: How long a claim holds without a heartbeat; a dead worker's work is taken
    #: again this long after its last heartbeat.
    lease_seconds: float = Field(default=60.0, alias="WORKER_LEASE_SECONDS", gt=0)
    #: How often leases are renewed (default: a third of the lease).
    heartbeat_seconds: float | None = Field(default=None, alias="WORKER_HEARTBEAT_SECONDS", gt=0)
    #: Claims of one job before it is failed (and refunded) instead of retried.
    max_attempts: int = Field(default=3, alias="WORKER_MAX_ATTEMPTS", ge=1)
    #: The longest wait for a notification before looking at the queue anyway.
    poll_seconds: float = Field(default=30.0, alias="WORKER_POLL_SECONDS", gt=0)
    #: How often expired leases are looked for.
    recovery_seconds: float = Field(default=30.0, alias="WORKER_RECOVERY_SECONDS", gt=0)
    #: How often the lifecycle purge runs (0: never, from this worker).
    purge_hours: float = Field(default=24.0, alias="WORKER_PURGE_HOURS", ge=0)
    #: How often metering's maintenance runs (0: never, from this worker): the
    #: request log's partitions ahead, the closed hours' usage charged through the
    #: ledger, expired holds and quota windows swept (database.metering.maintenance).
    metering_seconds: float = Field(default=300.0, alias="WORKER_METERING_SECONDS", ge=0)
    #: Months of request-log partitions kept made ahead of this one.
    inference_months_ahead: int = Field(default=2, alias="WORKER_INFERENCE_MONTHS_AHEAD", ge=0)
    #: How often this worker runs a verify and records it (reconciliation_runs; 0: never).
    reconcile_hours: float = Field(default=24.0, alias="WORKER_RECONCILE_HOURS", ge=0)
    #: How often the billing alerts' outbox is delivered (0: never, from this worker).
    alert_delivery_seconds: float = Field(default=30.0, alias="WORKER_ALERT_DELIVERY_SECONDS", ge=0)
    #: Threads one job's fit may use (n_jobs, BLAS, OpenMP); default: the cores divided
    #: among the slots, so that slots x threads = cores.
    threads_per_slot: int | None = Field(default=None, alias="WORKER_THREADS_PER_SLOT", ge=1)
    #: How far a job's process may grow beyond its start-up size (RLIMIT_AS); 0: no limit.
    memory_limit_mb: int = Field(default=2048, alias="WORKER_MEMORY_LIMIT_MB", ge=0)
    #: How long one attempt of a job may run, by its owner's tier (seconds).
    time_limit_free_seconds: float = Field(
        default=600, alias="WORKER_TIME_LIMIT_FREE_SECONDS", gt=0
    )
    time_limit_pro_seconds: float = Field(default=3600, alias="WORKER_TIME_LIMIT_PRO_SECONDS", gt=0)
    time_limit_enterprise_seconds: float = Field(
        default=14400, alias="WORKER_TIME_LIMIT_ENTERPRISE_SECONDS", gt=0
    )
    #: How often a running node looks for a cancel, the stop signal and the time limit.
    watch_seconds: float = Field(default=1.0, alias="WORKER_WATCH_SECONDS", gt=0, le=60)
    data_dir: Path = Field(default_factory=_default_data_dir, alias="AUTOML_DATA_DIR")
    #: Where uploads, Parquet files and model artifacts live (the API's setting).
    storage_url: str | None = Field(default=None, alias="STORAGE_URL")
    #: The tiers' limits (the API's setting): the storage quota the Parquet copies
    #: and the saved models must fit in.
    tier_limits: Limits = Field(default_factory=Limits, alias="TIER_LIMITS")
    #: ``/metrics`` of this worker on this port (0: not served; docs/metrics.md).
    metrics_port: int = Field(default=0, alias="WORKER_METRICS_PORT", ge=0, le=65535)
    #: The address it listens on (``0.0.0.0``: every interface).
    metrics_host: str = Field(default="127.0.0.1", alias="WORKER_METRICS_HOST")

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> WorkerSettings:
        if self.heartbeat_seconds is None:
            self.heartbeat_seconds = self.lease_seconds / 3
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("WORKER_HEARTBEAT_SECONDS must be shorter than WORKER_LEASE_SECONDS")
        return self

    @property
    def heartbeat(self) -> float:
        assert self.heartbeat_seconds is not None
        return self.heartbeat_seconds

    @property
    def threads(self) -> int:
        """Threads per slot: the setting, or the cores divided among the slots."""
        return self.threads_per_slot or max(1, cpu_count() // self.slots)

    def time_limits(self) -> dict[UserTier, float]:
        return {
            UserTier.FREE: self.time_limit_free_seconds,
            UserTier.PRO: self.time_limit_pro_seconds,
            UserTier.ENTERPRISE: self.time_limit_enterprise_seconds,
        }

    def storage_location(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")
