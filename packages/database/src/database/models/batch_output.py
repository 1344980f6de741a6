"""The file a batch prediction wrote (issue 14): counted in its owner's storage.

One row per completed ``batch_prediction`` job's Parquet output, written by the
worker with the file (``database.deployments.record_batch_output``).
``users.storage_used_bytes`` follows ``size_bytes`` like the bytes of dataset
versions and models (``sql/triggers/storage.sql``; the size is written once,
ML022), and the purge removes the row and its file before the job
(``database.lifecycle``), so the storage quota counts every batch output kept.
"""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin


class BatchOutput(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "batch_outputs"

    # Users are never deleted (a purged one stays as a tombstone); the purge deletes
    # these rows itself, with their files, before the job.
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="RESTRICT"), unique=True
    )
    #: Where the Parquet file is (the storage's location).
    location: Mapped[str]
    size_bytes: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("size_bytes >= 0", name="size_nonnegative"),
        CheckConstraint("char_length(location) BETWEEN 1 AND 2000", name="location_length"),
        Index("ix_batch_outputs_user_id", "user_id"),
    )


__all__ = ["BatchOutput"]
