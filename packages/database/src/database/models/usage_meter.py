"""A user's running meter: how far usage was charged, and what is owed beyond it.

``pending_micro`` (micro-credits) is the cost of the usage events not yet charged
plus the remainder of the last charge (less than one credit): what the user owes
and the ledger does not show yet. ``usage_events_before_insert`` adds to it under
this row's lock; an aggregation (``database.metering.charge_usage``) takes it back
as it charges whole credits and moves ``charged_through``. ``automl-db verify``
recomputes it.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base


class UsageMeter(Base):
    __tablename__ = "usage_meters"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="RESTRICT"), primary_key=True
    )
    #: Every usage event dated before this instant is charged.
    charged_through: Mapped[dt.datetime]
    pending_micro: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    __table_args__ = (CheckConstraint("pending_micro >= 0", name="pending_nonnegative"),)


__all__ = ["UsageMeter"]
