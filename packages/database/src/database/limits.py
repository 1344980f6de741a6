"""The tiers' limits, shared by the API (every limit) and the workers (the storage
quota, which the Parquet copy of an upload and a model's artifact count against).

From the environment as ``TIER_LIMITS`` (JSON) or one value at a time
(``TIER_LIMITS__FREE__STORAGE_BYTES=1000000``), read by the API's and the workers'
settings alike, so both hold the same quota.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from database.models import User, UserTier

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


def storage_refusal(
    session: Session, user_id: uuid.UUID, incoming_bytes: int, limits: Limits
) -> str | None:
    """Why ``incoming_bytes`` more do not fit in the user's storage quota, or None.

    Call it with the user's row locked (``database.credits.lock_users``): every
    writer of stored bytes (an upload, an ingestion's Parquet, a model) takes that
    lock first, so the quota holds however many run at once.
    """
    row = session.execute(
        select(User.tier, User.storage_used_bytes).where(User.id == user_id)
    ).one_or_none()
    if row is None:
        return None
    quota = limits.for_tier(row.tier).storage_bytes
    if row.storage_used_bytes + incoming_bytes <= quota:
        return None
    return (
        f"storage quota exceeded: {incoming_bytes} more bytes do not fit, the {row.tier} tier"
        f" stores at most {quota} bytes and {row.storage_used_bytes} are used"
    )
