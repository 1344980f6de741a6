"""The API's settings, from the environment (pydantic-settings).

The database's own settings (``DATABASE_URL``, pool, timeouts, ``AUTOML_DATA_DIR``)
stay in :mod:`database.config`; these are the service's. Nested values use ``__``:
``TIER_LIMITS__FREE__MAX_DATASETS=5``. Prices are not settings: they are the price
book in the database (docs/billing.md, ``automl-db prices``).
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


class Identity(BaseModel):
    """Login sessions and the abuse limits (database.identity.AbuseLimits)."""

    session_ttl_hours: int = Field(default=168, ge=1, le=24 * 366)
    signup_per_ip: int = Field(default=20, ge=1)
    signup_window_s: int = Field(default=3600, ge=1)
    login_per_ip: int = Field(default=60, ge=1)
    login_window_s: int = Field(default=300, ge=1)
    lockout_failures: int = Field(default=5, ge=1)
    lockout_window_s: int = Field(default=900, ge=1)
    lockout_s: int = Field(default=900, ge=1)
    slow_failures: int = Field(default=20, ge=1)
    slow_window_s: int = Field(default=900, ge=1)
    slow_interval_s: int = Field(default=10, ge=1)
    known_address_days: int = Field(default=90, ge=0)


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
    #: ``GET /metrics`` wants ``Authorization: Bearer <this>`` when set (docs/metrics.md).
    metrics_token: SecretStr | None = Field(default=None, alias="METRICS_TOKEN")
    #: The signing secret of the Stripe webhook endpoint (whsec_...).
    stripe_webhook_secret: SecretStr | None = Field(default=None, alias="STRIPE_WEBHOOK_SECRET")
    #: Stripe's tolerance for the age of a signed webhook, in seconds.
    stripe_webhook_tolerance_s: int = Field(default=300, alias="STRIPE_WEBHOOK_TOLERANCE", ge=0)
    #: The Stripe mode this server takes events of: false (test mode, the default)
    #: or true (live). An event of the other mode is refused (400 livemode_mismatch).
    stripe_livemode: bool = Field(default=False, alias="STRIPE_LIVEMODE")
    #: Stripe's secret API key (sk_test_... / sk_live_...): POST /v1/credits/checkout
    #: creates Checkout Sessions with it (503 checkout_not_configured without it).
    stripe_api_key: SecretStr | None = Field(default=None, alias="STRIPE_API_KEY")
    #: Another address for Stripe's API (the tests' local Stripe-like server).
    stripe_api_base: str | None = Field(default=None, alias="STRIPE_API_BASE")
    #: Billing alerts may post to http:// URLs (local receivers, development only);
    #: otherwise a webhook_url must be https.
    billing_alerts_allow_http: bool = Field(default=False, alias="BILLING_ALERTS_ALLOW_HTTP")
    #: POST /v1/credits/purchase credits a package without payment: development only.
    dev_purchases: bool = Field(default=False, alias="ENABLE_DEV_PURCHASES")
    #: How often GET /v1/jobs/{id}/events looks at the database for news, in seconds.
    events_poll_seconds: float = Field(default=0.5, alias="EVENTS_POLL_SECONDS", gt=0, le=60)
    #: The largest body of a prediction (JSON, CSV or Parquet): 413 past it.
    max_predict_bytes: int = Field(default=20 * MiB, alias="MAX_PREDICT_BYTES", gt=0)
    #: Where ``automl-serve`` answers predictions (``http://127.0.0.1:8001``): the API
    #: forwards ``POST /v1/deployments/{id}/predict`` there. Unset: served in-process.
    serving_url: str | None = Field(default=None, alias="SERVING_URL")
    #: The serving process's port (``automl-serve``; its host is ``HOST``).
    serve_port: int = Field(default=8001, alias="SERVE_PORT", ge=0, le=65535)
    #: Memory the loaded models may hold in one process (LRU beyond it).
    serve_cache_bytes: int = Field(default=1024 * MiB, alias="SERVE_CACHE_BYTES", gt=0)
    #: Threads predictions run in (per process); 0: anyio's default (40).
    serve_threads: int = Field(default=0, alias="SERVE_THREADS", ge=0, le=1000)
    tier_limits: Limits = Field(default_factory=Limits, alias="TIER_LIMITS")
    #: ``IDENTITY__LOGIN_PER_IP=100`` etc.
    identity: Identity = Field(default_factory=Identity, alias="IDENTITY")
    #: The address users reach the service at (links in mails).
    public_url: str = Field(default="http://127.0.0.1:8000", alias="PUBLIC_URL")

    def storage_location(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")


@lru_cache(maxsize=1)
def get_settings() -> ApiSettings:
    return ApiSettings()
