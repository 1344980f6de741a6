"""A tier's prices for a span of time (billing, issue 16).

Books of one tier never overlap (an exclusion constraint per tier; the embedded
PostgreSQL has no btree_gist, so the tier equality is each constraint's WHERE).
A book in force (``effective_from <= now()``) is history: its items' prices and its
start are immutable (ML090, ML091); changing prices is a new book
(``database.billing.set_prices``). Rules: sql/triggers/billing.sql.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, Index, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import UserTier, user_tier

if TYPE_CHECKING:
    from database.models.price_item import PriceItem


class PriceBook(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "price_books"

    tier: Mapped[UserTier] = mapped_column(user_tier)
    # ISO 4217, lower case as Stripe writes it; what the credits are sold in.
    currency: Mapped[str] = mapped_column(server_default=text("'usd'"))
    effective_from: Mapped[dt.datetime]
    # NULL: until a later book starts.
    effective_to: Mapped[dt.datetime | None]
    description: Mapped[str | None]
    created_by: Mapped[str] = mapped_column(server_default=text("session_user"))

    items: Mapped[list[PriceItem]] = relationship(
        back_populates="book", lazy="raise_on_sql", passive_deletes=True
    )

    __table_args__ = (
        CheckConstraint("currency ~ '^[a-z]{3}$'", name="currency_iso"),
        CheckConstraint(
            "effective_to IS NULL OR effective_to > effective_from", name="effective_span"
        ),
        Index("ix_price_books_tier_effective_from", "tier", "effective_from"),
    )
