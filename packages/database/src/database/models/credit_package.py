"""A credit bundle users can buy."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import CreditTierRestriction, credit_tier_restriction


class CreditPackage(IDMixin, TimestampMixin, Base):
    __tablename__ = "credit_packages"

    name: Mapped[str]
    credits: Mapped[int]
    price_cents: Mapped[int]
    stripe_price_id: Mapped[str | None]
    is_active: Mapped[bool] = mapped_column(server_default=text("true"))
    tier_restriction: Mapped[CreditTierRestriction] = mapped_column(
        credit_tier_restriction, server_default=CreditTierRestriction.NONE.value
    )

    __table_args__ = (
        UniqueConstraint("name"),
        UniqueConstraint("stripe_price_id"),
        CheckConstraint("credits > 0", name="credits_positive"),
        CheckConstraint("price_cents >= 0", name="price_nonnegative"),
    )
