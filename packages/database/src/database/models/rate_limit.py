"""Counters of the abuse limits (database.identity.hit): sign-ups and logins per IP,
failed logins per account.

One row per key (``signup-ip:<ip>``, ``login-ip:<ip>``, ``login-fail:<email>``): the
start of the current window and the count in it, moved by one
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``, so every API process counts in the
same place. ``blocked_until`` is a lockout (failed logins).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import CheckConstraint, Index, Integer
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base


class RateLimit(Base):
    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(primary_key=True)
    window_started_at: Mapped[dt.datetime]
    count: Mapped[int] = mapped_column(Integer)
    blocked_until: Mapped[dt.datetime | None]

    __table_args__ = (
        CheckConstraint("count >= 0", name="count_nonnegative"),
        CheckConstraint("char_length(key) <= 400", name="key_length"),
        # Retention: old windows are removed by their start.
        Index("ix_rate_limits_window_started_at", "window_started_at"),
    )
