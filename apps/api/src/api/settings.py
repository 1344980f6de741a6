"""The API's settings, from the environment (pydantic-settings).

The database's own settings (``DATABASE_URL``, pool, timeouts, ``AUTOML_DATA_DIR``)
stay in :mod:`database.config`; these are the service's. Nested values use ``__``:
``TIER_LIMITS__FREE__MAX_DATASETS=5``, ``PRICING__NODE_CREDITS__MODEL=20``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from database.config import get_settings as get_database_settings
from database.models import NodeType, UserTier

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class TierLimits(BaseModel):
    """What one tier may hold and run at once."""

    storage_bytes: int = Field(ge=0)
    max_datasets: int = Field(ge=0)
    max_workflows: int = Field(ge=0)
    max_running_jobs: int = Field(ge=0)


class FreeLimits(TierLimits):
    storage_bytes: int = Field(default=1 * GiB, ge=0)
    max_datasets: int = Field(default=10, ge=0)
    max_workflows: int = Field(default=20, ge=0)
    max_running_jobs: int = Field(default=2, ge=0)


class ProLimits(TierLimits):
    storage_bytes: int = Field(default=50 * GiB, ge=0)
    max_datasets: int = Field(default=200, ge=0)
    max_workflows: int = Field(default=500, ge=0)
    max_running_jobs: int = Field(default=10, ge=0)


class EnterpriseLimits(TierLimits):
    storage_bytes: int = Field(default=1024 * GiB, ge=0)
    max_datasets: int = Field(default=10_000, ge=0)
    max_workflows: int = Field(default=10_000, ge=0)
    max_running_jobs: int = Field(default=50, ge=0)


class Limits(BaseModel):
    """Per tier; each value can be set alone (``TIER_LIMITS__PRO__MAX_WORKFLOWS=50``)."""

    free: FreeLimits = Field(default_factory=FreeLimits)
    pro: ProLimits = Field(default_factory=ProLimits)
    enterprise: EnterpriseLimits = Field(default_factory=EnterpriseLimits)

    def for_tier(self, tier: UserTier | str) -> TierLimits:
        limits: TierLimits = getattr(self, UserTier(tier).value)
        return limits


class NodeCredits(BaseModel):
    """Credits each node of a workflow costs when it runs."""

    dataset: int = Field(default=0, ge=0)
    preprocess: int = Field(default=1, ge=0)
    model: int = Field(default=10, ge=0)
    visualize: int = Field(default=1, ge=0)
    save: int = Field(default=1, ge=0)

    def of(self, node_type: NodeType | str) -> int:
        value: int = getattr(self, NodeType(node_type).value)
        return value


class Pricing(BaseModel):
    """A job costs ``base_credits`` plus the credits of each of its nodes."""

    base_credits: int = Field(default=1, ge=0)
    node_credits: NodeCredits = NodeCredits()


def _default_data_dir() -> Path:
    return get_database_settings().data_dir


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="ignore", env_file=None, env_nested_delimiter="__", populate_by_name=True
    )

    host: str = Field(default="127.0.0.1", alias="HOST")
    port: int = Field(default=8000, alias="PORT", ge=0, le=65535)
    #: The data folder (shared with the database package's embedded server).
    data_dir: Path = Field(default_factory=_default_data_dir, alias="AUTOML_DATA_DIR")
    #: Where uploads go: ``s3://bucket/prefix``, or a local folder (default
    #: ``<data folder>/storage``).
    storage_url: str | None = Field(default=None, alias="STORAGE_URL")
    #: The largest file one upload may carry.
    max_upload_bytes: int = Field(default=200 * MiB, alias="MAX_UPLOAD_BYTES", gt=0)
    #: The largest body of any other request (JSON): refused with 413 past it.
    max_json_bytes: int = Field(default=1 * MiB, alias="MAX_JSON_BYTES", gt=0)
    #: The signing secret of the Stripe webhook endpoint (whsec_...).
    stripe_webhook_secret: SecretStr | None = Field(default=None, alias="STRIPE_WEBHOOK_SECRET")
    #: Stripe's tolerance for the age of a signed webhook, in seconds.
    stripe_webhook_tolerance_s: int = Field(default=300, alias="STRIPE_WEBHOOK_TOLERANCE", ge=0)
    #: The Stripe mode this server takes events of: false (test mode, the default)
    #: or true (live). An event of the other mode is refused (400 livemode_mismatch).
    stripe_livemode: bool = Field(default=False, alias="STRIPE_LIVEMODE")
    #: POST /v1/credits/purchase credits a package without payment: development only.
    dev_purchases: bool = Field(default=False, alias="ENABLE_DEV_PURCHASES")
    tier_limits: Limits = Field(default_factory=Limits, alias="TIER_LIMITS")
    pricing: Pricing = Field(default_factory=Pricing, alias="PRICING")

    def storage_location(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")


@lru_cache(maxsize=1)
def get_settings() -> ApiSettings:
    return ApiSettings()
