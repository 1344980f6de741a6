"""One priced thing of a price book: an sku (a node type, ``job``,
``predicted_rows``, ``batch_rows``, ``storage_gb_month``), its unit and its credits
per unit. Immutable once its book is in force (ML090)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import PriceUnit, price_unit

if TYPE_CHECKING:
    from database.models.price_book import PriceBook


class PriceItem(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "price_items"

    price_book_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("price_books.id", ondelete="RESTRICT")
    )
    sku: Mapped[str]
    unit: Mapped[PriceUnit] = mapped_column(price_unit)
    credits_per_unit: Mapped[int]

    book: Mapped[PriceBook] = relationship(back_populates="items", lazy="raise_on_sql")

    __table_args__ = (
        UniqueConstraint("price_book_id", "sku"),
        CheckConstraint("sku ~ '^[a-z][a-z0-9_]{0,62}$'", name="sku_format"),
        CheckConstraint("credits_per_unit >= 0", name="credits_nonnegative"),
    )
