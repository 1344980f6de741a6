"""Links a job and the model it produced to an experiment."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import CheckConstraint, Double, ForeignKeyConstraint, Index, UniqueConstraint
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import ExperimentRunStatus, experiment_run_status

if TYPE_CHECKING:
    from database.models.experiment import Experiment
    from database.models.job import Job
    from database.models.model import Model


class ExperimentRun(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "experiment_runs"

    experiment_id: Mapped[uuid.UUID]
    # The experiment's owner; the job and model must be theirs too.
    user_id: Mapped[uuid.UUID]
    job_id: Mapped[uuid.UUID | None]
    model_id: Mapped[uuid.UUID | None]
    name: Mapped[str | None]
    notes: Mapped[str | None]
    # Metrics copied when the run was recorded, so a comparison survives the model.
    metrics: Mapped[dict[str, Any] | None]
    # An automl trial (database.automl): its number in the search, the learner and
    # hyperparameters it tried, its seconds and how it ended. A hand-made run leaves
    # them empty (status finished).
    trial_number: Mapped[int | None]
    parameters: Mapped[dict[str, Any] | None]
    duration_seconds: Mapped[float | None]
    # The trial's score on each cross-validation fold, in fold order (their mean is the
    # run's score); NULL for a fold FLAML could not score. Finite numbers only.
    fold_scores: Mapped[list[float | None] | None] = mapped_column(ARRAY(Double))
    status: Mapped[ExperimentRunStatus] = mapped_column(
        experiment_run_status, server_default=ExperimentRunStatus.FINISHED.value
    )

    experiment: Mapped[Experiment] = relationship(
        back_populates="runs", lazy="raise_on_sql", foreign_keys="ExperimentRun.experiment_id"
    )
    job: Mapped[Job | None] = relationship(lazy="raise_on_sql", foreign_keys="ExperimentRun.job_id")
    model: Mapped[Model | None] = relationship(
        back_populates="experiment_runs", lazy="raise_on_sql", foreign_keys="ExperimentRun.model_id"
    )

    __table_args__ = (
        ForeignKeyConstraint(
            ["experiment_id", "user_id"],
            ["experiments.id", "experiments.user_id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["job_id", "user_id"], ["jobs.id", "jobs.user_id"], ondelete="SET NULL (job_id)"
        ),
        ForeignKeyConstraint(
            ["model_id", "user_id"],
            ["models.id", "models.user_id"],
            ondelete="SET NULL (model_id)",
        ),
        UniqueConstraint("experiment_id", "model_id"),
        UniqueConstraint("experiment_id", "trial_number"),
        CheckConstraint("trial_number >= 1", name="trial_number_positive"),
        CheckConstraint("duration_seconds >= 0", name="duration_not_negative"),
        CheckConstraint(
            "array_ndims(fold_scores) = 1 AND cardinality(fold_scores) BETWEEN 1 AND 20"
            " AND NOT ('NaN'::float8 = ANY (fold_scores))"
            " AND NOT ('Infinity'::float8 = ANY (fold_scores))"
            " AND NOT ('-Infinity'::float8 = ANY (fold_scores))",
            name="fold_scores_finite",
        ),
        Index("ix_experiment_runs_experiment_id_user_id", "experiment_id", "user_id"),
        Index("ix_experiment_runs_job_id_user_id", "job_id", "user_id"),
        Index("ix_experiment_runs_model_id_user_id", "model_id", "user_id"),
    )
