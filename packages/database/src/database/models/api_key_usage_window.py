"""A key's use in one window (a minute of requests, a month of rows): the counter
its quotas are checked against, in the database so every API process agrees.

``database.metering.admit`` moves it with one ``INSERT ... ON CONFLICT DO UPDATE ...
WHERE used + n <= limit RETURNING``: the row lock makes concurrent admissions
count one at a time, and no row back means the quota is spent (429).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, PrimaryKeyConstraint
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base
from database.models.enums import QuotaWindow, quota_window


class ApiKeyUsageWindow(Base):
    __tablename__ = "api_key_usage_windows"

    api_key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    period: Mapped[QuotaWindow] = mapped_column(quota_window)
    window_start: Mapped[dt.datetime]
    used: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        PrimaryKeyConstraint("api_key_id", "period", "window_start"),
        CheckConstraint("used >= 0", name="used_nonnegative"),
    )


__all__ = ["ApiKeyUsageWindow"]
