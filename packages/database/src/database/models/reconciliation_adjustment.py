"""What a repair changed and why: one row per value a repair corrected.

Every repair of a recorded ``automl-db verify --repair`` (or the worker's daily
run) is one of these rows: the row it changed (``table_name``, ``row_id``: NULL
for the user's own row in ``users``), the column, the old and new value, and why
(c16b00000001 folded the run's view of ``derived_repairs`` in here).
"""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin


class ReconciliationAdjustment(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "reconciliation_adjustments"

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("reconciliation_runs.id", ondelete="CASCADE")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    #: The table of the corrected row (one of ``derived_repair.REPAIRED_TABLES``).
    table_name: Mapped[str] = mapped_column(server_default=text("'users'"))
    #: The corrected row's id when it is not the user's own row (no foreign key: the
    #: record outlives a deleted version).
    row_id: Mapped[uuid.UUID | None]
    column_name: Mapped[str]
    old_value: Mapped[int] = mapped_column(BigInteger)
    new_value: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str]

    __table_args__ = (
        Index("ix_reconciliation_adjustments_run_id", "run_id"),
        Index("ix_reconciliation_adjustments_user_id", "user_id"),
        CheckConstraint(
            "table_name IN ('users', 'model_versions', 'registered_models')",
            name="table_name_known",
        ),
        CheckConstraint("(table_name = 'users') = (row_id IS NULL)", name="row_id_unless_users"),
    )
