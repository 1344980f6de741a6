"""Audit log of repairs of the derived columns the triggers maintain.

Rows are written only by the repair path of ``automl-db verify --repair``
(sql/triggers/repair.sql): one row per value corrected. ``users_repair_derived``
corrects a user's counters and storage_used_bytes (the users_guard_derived trigger
logs them, ``table_name`` ``users``); ``registry_repair_derived`` corrects
``model_versions.download_count`` (logged by model_versions_download_count_guard)
and ``registered_models.last_version_number`` (logged by the function), with the
row's id in ``row_id`` and its owner in ``user_id``. Applications may read it,
never write it (``automl-db grant``).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, func, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, IDMixin

#: The tables whose derived columns are repaired.
REPAIRED_TABLES = ("users", "model_versions", "registered_models")


class DerivedRepair(IDMixin, Base):
    __tablename__ = "derived_repairs"

    # CASCADE: users are never hard-deleted by the platform (purge leaves a tombstone),
    # so the log outlives every account it names. For a registry row: its owner.
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    #: The table of the corrected row (one of ``REPAIRED_TABLES``).
    table_name: Mapped[str] = mapped_column(server_default=text("'users'"))
    #: The corrected row's id when it is not the user's own row (no foreign key: the
    #: log outlives a deleted version).
    row_id: Mapped[uuid.UUID | None]
    column_name: Mapped[str]
    old_value: Mapped[int] = mapped_column(BigInteger)
    new_value: Mapped[int] = mapped_column(BigInteger)
    repaired_by: Mapped[str] = mapped_column(server_default=text("session_user"))
    repaired_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        Index("ix_derived_repairs_user_id_repaired_at", "user_id", "repaired_at"),
        CheckConstraint(
            "table_name IN ('users', 'model_versions', 'registered_models')",
            name="table_name_known",
        ),
        CheckConstraint("(table_name = 'users') = (row_id IS NULL)", name="row_id_unless_users"),
    )
