"""Audit log of repairs of the users columns the triggers maintain.

Rows are written only by the users_guard_derived trigger, when
public.users_repair_derived (sql/triggers/repair.sql) corrects a counter or
storage_used_bytes that drifted: one row per column changed. Applications may
read it, never write it (``automl-db grant``).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, Index, func, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, IDMixin


class DerivedRepair(IDMixin, Base):
    __tablename__ = "derived_repairs"

    # CASCADE: users are never hard-deleted by the platform (purge leaves a tombstone),
    # so the log outlives every account it names.
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    column_name: Mapped[str]
    old_value: Mapped[int] = mapped_column(BigInteger)
    new_value: Mapped[int] = mapped_column(BigInteger)
    repaired_by: Mapped[str] = mapped_column(server_default=text("session_user"))
    repaired_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())

    __table_args__ = (Index("ix_derived_repairs_user_id_repaired_at", "user_id", "repaired_at"),)
