"""An evaluation run: a model version scored on a dataset version against criteria."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import ProblemType, problem_type


class EvaluationRun(IDMixin, CreatedAtMixin, Base):
    """One run, made by the ``evaluation`` job ``job_id`` (its status is the job's).

    ``criteria`` is the criteria as they were when the run was asked for (a list of
    objects with their ``id``): editing or deleting a criterion later changes no run.
    The results (``metrics``, ``criteria_results``, ``plot_data``, the counts) are
    written once, by the worker, when the job completes. Its per-row results live in
    ``evaluation_row_results`` and go with it (ON DELETE CASCADE).
    """

    __tablename__ = "evaluation_runs"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID]
    model_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    dataset_version_id: Mapped[uuid.UUID]
    criteria: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    problem_type: Mapped[ProblemType | None] = mapped_column(problem_type)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    #: ``[{"criterion_id", "name", "passed", "value"|"failed_rows", ...}]``.
    criteria_results: Mapped[list[Any] | None] = mapped_column(JSONB(none_as_null=True))
    #: The data every plot kind is drawn from (curves sampled to a bounded size).
    plot_data: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    passed: Mapped[bool | None]
    row_count: Mapped[int | None] = mapped_column(BigInteger)
    failed_row_count: Mapped[int | None] = mapped_column(BigInteger)
    completed_at: Mapped[dt.datetime | None]

    __table_args__ = (
        # One run per job (a job's id decides its user_id: unique on job_id), and the
        # index of the key to jobs.
        UniqueConstraint("job_id", "user_id"),
        UniqueConstraint("id", "user_id"),
        ForeignKeyConstraint(
            ["job_id", "user_id"], ["jobs.id", "jobs.user_id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["dataset_version_id", "user_id"],
            ["dataset_versions.id", "dataset_versions.user_id"],
            ondelete="CASCADE",
        ),
        CheckConstraint(
            "jsonb_typeof(criteria) = 'array' AND jsonb_array_length(criteria) <= 100",
            name="criteria_shape",
        ),
        CheckConstraint(
            "(row_count IS NULL OR row_count >= 0)"
            " AND (failed_row_count IS NULL OR failed_row_count BETWEEN 0 AND row_count)",
            name="counts_valid",
        ),
        CheckConstraint(
            "(completed_at IS NULL) = (metrics IS NULL)", name="results_when_completed"
        ),
        Index("ix_evaluation_runs_user_id_created_at", "user_id", "created_at"),
        Index("ix_evaluation_runs_model_version_id", "model_version_id"),
        Index("ix_evaluation_runs_dataset_version_id_user_id", "dataset_version_id", "user_id"),
    )


__all__ = ["EvaluationRun"]
