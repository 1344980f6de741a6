"""The price items a job was priced with, and how many units of each: what the job
cost, for ever (a later price book changes neither it nor its refund)."""

from __future__ import annotations

import uuid

from sqlalchemy import CheckConstraint, ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base


class JobPriceItem(Base):
    __tablename__ = "job_price_items"

    # CASCADE: the lines go with their job (purge removes only jobs the ledger does
    # not name; a charged job and its lines stay).
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    price_item_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("price_items.id", ondelete="RESTRICT"), primary_key=True
    )
    quantity: Mapped[int]
    # quantity x the item's credits_per_unit, written by the database (billing.sql).
    credits: Mapped[int]

    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("credits >= 0", name="credits_nonnegative"),
        Index("ix_job_price_items_price_item_id", "price_item_id"),
    )
