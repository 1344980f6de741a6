"""A group of runs whose models a user compares."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, Index, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import ProblemType, problem_type

if TYPE_CHECKING:
    from database.models.dataset import Dataset
    from database.models.experiment_run import ExperimentRun
    from database.models.user import User


class Experiment(IDMixin, TimestampMixin, Base):
    __tablename__ = "experiments"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str]
    description: Mapped[str | None]
    problem_type: Mapped[ProblemType | None] = mapped_column(problem_type)
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL")
    )
    # The metric runs are ranked by, e.g. "accuracy" or "rmse".
    primary_metric: Mapped[str | None]

    user: Mapped[User] = relationship(back_populates="experiments", lazy="raise_on_sql")
    dataset: Mapped[Dataset | None] = relationship(lazy="raise_on_sql")
    runs: Mapped[list[ExperimentRun]] = relationship(
        back_populates="experiment",
        lazy="raise_on_sql",
        passive_deletes=True,
        foreign_keys="ExperimentRun.experiment_id",
    )

    __table_args__ = (
        UniqueConstraint("id", "user_id"),
        Index("ix_experiments_user_id_created_at", "user_id", "created_at"),
        Index("ix_experiments_dataset_id", "dataset_id"),
    )
