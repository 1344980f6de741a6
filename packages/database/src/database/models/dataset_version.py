"""One version of a dataset: the uploaded file and its processed Parquet copy."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    FetchedValue,
    ForeignKeyConstraint,
    Index,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import FileFormat, IngestionStatus, file_format, ingestion_status

if TYPE_CHECKING:
    from database.models.dataset import Dataset
    from database.models.dataset_profile import DatasetProfile
    from database.models.ingestion_job import IngestionJob


class DatasetVersion(IDMixin, TimestampMixin, Base):
    __tablename__ = "dataset_versions"

    dataset_id: Mapped[uuid.UUID]
    # The dataset's owner, kept in step by the composite foreign key below
    # (ON UPDATE CASCADE): storage accounting and ownership checks need no join.
    user_id: Mapped[uuid.UUID]
    upload_id: Mapped[uuid.UUID | None]
    # Filled by the database (next number of the dataset) when not given.
    version_number: Mapped[int] = mapped_column(server_default=FetchedValue())
    version_label: Mapped[str | None]
    original_filename: Mapped[str | None]
    original_format: Mapped[FileFormat] = mapped_column(
        file_format, server_default=FileFormat.UNKNOWN.value
    )
    original_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    s3_path: Mapped[str | None]
    parquet_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    row_count: Mapped[int | None] = mapped_column(BigInteger)
    column_count: Mapped[int | None]
    columns_metadata: Mapped[dict[str, Any] | None]
    status: Mapped[IngestionStatus] = mapped_column(
        ingestion_status, server_default=IngestionStatus.PENDING.value
    )
    error_message: Mapped[str | None]
    processed_at: Mapped[dt.datetime | None]

    dataset: Mapped[Dataset] = relationship(
        back_populates="versions", lazy="raise_on_sql", foreign_keys="DatasetVersion.dataset_id"
    )
    profile: Mapped[DatasetProfile | None] = relationship(
        back_populates="dataset_version", lazy="raise_on_sql", passive_deletes=True
    )
    ingestion_jobs: Mapped[list[IngestionJob]] = relationship(
        back_populates="dataset_version", lazy="raise_on_sql", passive_deletes=True
    )

    __table_args__ = (
        ForeignKeyConstraint(
            ["dataset_id", "user_id"],
            ["datasets.id", "datasets.user_id"],
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        UniqueConstraint("dataset_id", "version_number"),
        UniqueConstraint("dataset_id", "id"),
        UniqueConstraint("id", "user_id"),
        CheckConstraint("version_number > 0", name="version_number_positive"),
        CheckConstraint(
            "(original_size_bytes IS NULL OR original_size_bytes >= 0)"
            " AND (parquet_size_bytes IS NULL OR parquet_size_bytes >= 0)",
            name="sizes_nonnegative",
        ),
        CheckConstraint(
            "(row_count IS NULL OR row_count >= 0) AND (column_count IS NULL OR column_count >= 0)",
            name="shape_nonnegative",
        ),
        Index("ix_dataset_versions_user_id_dataset_id", "user_id", "dataset_id"),
    )
