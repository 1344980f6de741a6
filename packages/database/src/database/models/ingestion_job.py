"""Processing of one upload into a dataset version (read, convert to Parquet, profile)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Index, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import IngestionStatus, ingestion_status

if TYPE_CHECKING:
    from database.models.dataset_version import DatasetVersion


class IngestionJob(IDMixin, TimestampMixin, Base):
    __tablename__ = "ingestion_jobs"

    user_id: Mapped[uuid.UUID]
    dataset_version_id: Mapped[uuid.UUID]
    status: Mapped[IngestionStatus] = mapped_column(
        ingestion_status, server_default=IngestionStatus.PENDING.value
    )
    # Where the raw upload waits (local path or s3:// URI).
    source_path: Mapped[str | None]
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    # The worker processing it and until when (see Job): recovered when it expires.
    leased_by: Mapped[str | None]
    lease_expires_at: Mapped[dt.datetime | None]
    # Not claimed before this time (backoff after a transient failure); NULL: at once.
    run_after: Mapped[dt.datetime | None]
    error_message: Mapped[str | None]
    started_at: Mapped[dt.datetime | None]
    completed_at: Mapped[dt.datetime | None]

    dataset_version: Mapped[DatasetVersion] = relationship(
        back_populates="ingestion_jobs",
        lazy="raise_on_sql",
        foreign_keys="IngestionJob.dataset_version_id",
    )

    __table_args__ = (
        ForeignKeyConstraint(
            ["dataset_version_id", "user_id"],
            ["dataset_versions.id", "dataset_versions.user_id"],
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint(
            "(leased_by IS NULL) = (lease_expires_at IS NULL)"
            " AND (leased_by IS NULL OR status = 'processing')",
            name="lease_only_while_processing",
        ),
        Index("ix_ingestion_jobs_dataset_version_id_user_id", "dataset_version_id", "user_id"),
        Index("ix_ingestion_jobs_user_id_created_at", "user_id", "created_at"),
        # The workers' queue: oldest pending first.
        Index(
            "ix_ingestion_jobs_pending_created_at",
            "created_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_ingestion_jobs_lease_expires_at",
            "lease_expires_at",
            postgresql_where=text("status = 'processing'"),
        ),
    )
