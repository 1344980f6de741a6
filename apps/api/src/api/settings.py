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

# The tier limits live with the database package: the workers hold the storage
# quota too (the Parquet copies and the models count against it).
from database.limits import Limits, MiB
from database.models import NodeType


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
    #: An evaluation run (``POST /v1/evaluations``): scoring, no fit.
    evaluation_credits: int = Field(default=2, ge=0)


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
    #: How often GET /v1/jobs/{id}/events looks at the database for news, in seconds.
    events_poll_seconds: float = Field(default=0.5, alias="EVENTS_POLL_SECONDS", gt=0, le=60)
    tier_limits: Limits = Field(default_factory=Limits, alias="TIER_LIMITS")
    pricing: Pricing = Field(default_factory=Pricing, alias="PRICING")

    def storage_location(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")


@lru_cache(maxsize=1)
def get_settings() -> ApiSettings:
    return ApiSettings()
