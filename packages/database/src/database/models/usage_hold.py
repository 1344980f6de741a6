"""Credits held for a request admitted and not yet recorded (``metering.admit``).

A hold makes two concurrent admissions of one user see each other: the second
counts the first's rows against the balance. ``record_request`` releases it; a hold
whose process died expires (``expires_at``) and is swept by the worker.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin


class UsageHold(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "usage_holds"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    deployment_id: Mapped[uuid.UUID | None]
    rows: Mapped[int]
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str | None]
    expires_at: Mapped[dt.datetime]

    __table_args__ = (
        CheckConstraint("rows > 0", name="rows_positive"),
        CheckConstraint("amount_micro >= 0", name="amount_nonnegative"),
        Index("ix_usage_holds_user_id_expires_at", "user_id", "expires_at"),
    )


__all__ = ["UsageHold"]
