"""Statistical profile of one dataset version, written once ingestion finishes."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin

if TYPE_CHECKING:
    from database.models.dataset_version import DatasetVersion


class DatasetProfile(IDMixin, TimestampMixin, Base):
    __tablename__ = "dataset_profiles"

    dataset_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE")
    )
    row_count: Mapped[int] = mapped_column(BigInteger)
    column_count: Mapped[int]
    missing_cells: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    duplicate_rows: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # {column name: {"dtype", "nulls", "distinct", "min", "max", "mean", "std",
    #                "top_values", "histogram"}}
    column_stats: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # Pairwise correlations of numeric columns: {column: {column: r}}.
    correlations: Mapped[dict[str, Any] | None]
    warnings: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))

    dataset_version: Mapped[DatasetVersion] = relationship(
        back_populates="profile", lazy="raise_on_sql"
    )

    __table_args__ = (
        UniqueConstraint("dataset_version_id"),
        CheckConstraint(
            "row_count >= 0 AND column_count >= 0 AND missing_cells >= 0 AND duplicate_rows >= 0",
            name="counts_nonnegative",
        ),
    )
