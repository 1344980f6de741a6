"""A dataset: the container of versions, not a file itself."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import (
    ARRAY,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin, counter_column
from database.models.enums import ProblemType, problem_type

if TYPE_CHECKING:
    from database.models.dataset_version import DatasetVersion
    from database.models.user import User


class Dataset(IDMixin, TimestampMixin, Base):
    __tablename__ = "datasets"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str]
    description: Mapped[str | None]
    problem_type: Mapped[ProblemType | None] = mapped_column(problem_type)
    target_column: Mapped[str | None]
    # Columns never used as features (PATCH /v1/datasets/{id}); checked against the
    # current version's columns by sql/triggers/evaluation.sql (ML116).
    ignored_columns: Mapped[list[str]] = mapped_column(
        ARRAY(Text), server_default=text("'{}'::text[]")
    )
    current_version_id: Mapped[uuid.UUID | None]
    # The highest version number ever given (sql/triggers/dataset_versions.sql): the
    # next version gets one more, so a number is never reused after a delete.
    last_version_number: Mapped[int] = counter_column()

    user: Mapped[User] = relationship(back_populates="datasets", lazy="raise_on_sql")
    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset",
        lazy="raise_on_sql",
        passive_deletes=True,
        foreign_keys="DatasetVersion.dataset_id",
        order_by="DatasetVersion.version_number",
    )
    current_version: Mapped[DatasetVersion | None] = relationship(
        lazy="raise_on_sql",
        foreign_keys="Dataset.current_version_id",
        primaryjoin="Dataset.current_version_id == DatasetVersion.id",
        post_update=True,
        viewonly=True,
    )

    __table_args__ = (
        # Target of the (dataset_id, user_id) keys that keep children's owner in step.
        UniqueConstraint("id", "user_id"),
        # The current version must be a version of this dataset; deleting it
        # clears the pointer (and only the pointer).
        ForeignKeyConstraint(
            ["id", "current_version_id"],
            ["dataset_versions.dataset_id", "dataset_versions.id"],
            ondelete="SET NULL (current_version_id)",
            use_alter=True,
            name="fk_datasets_current_version_id_dataset_versions",
        ),
        Index("ix_datasets_user_id_created_at", "user_id", "created_at"),
        # The current-version key's own column: a version's delete finds its dataset.
        Index("ix_datasets_current_version_id_id", "current_version_id", "id"),
        CheckConstraint("last_version_number >= 0", name="last_version_number_nonnegative"),
        CheckConstraint("cardinality(ignored_columns) <= 1000", name="ignored_columns_count"),
    )
