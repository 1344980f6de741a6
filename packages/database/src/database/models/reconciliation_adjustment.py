"""What a repair changed and why: one row per corrected column of a user."""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin


class ReconciliationAdjustment(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "reconciliation_adjustments"

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("reconciliation_runs.id", ondelete="CASCADE")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    column_name: Mapped[str]
    old_value: Mapped[int] = mapped_column(BigInteger)
    new_value: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str]

    __table_args__ = (
        Index("ix_reconciliation_adjustments_run_id", "run_id"),
        Index("ix_reconciliation_adjustments_user_id", "user_id"),
    )
