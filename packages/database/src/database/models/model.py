"""A trained model artifact."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

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
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import ProblemType, problem_type

if TYPE_CHECKING:
    from database.models.experiment_run import ExperimentRun
    from database.models.job import Job
    from database.models.user import User


class Model(IDMixin, TimestampMixin, Base):
    __tablename__ = "models"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # The job that trained it; NULL once that job is purged.
    job_id: Mapped[uuid.UUID | None]
    name: Mapped[str]
    algorithm: Mapped[str]
    problem_type: Mapped[ProblemType] = mapped_column(problem_type)
    metrics: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    s3_path: Mapped[str | None]
    # The stored artifact's bytes, counted in users.storage_used_bytes (storage.sql);
    # written once, with the file (ML022 after).
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    is_deployed: Mapped[bool] = mapped_column(server_default=text("false"))
    # What using it needs, recorded by the worker when it saves the model (the one
    # record: a registered version copies them, database.registry.register_version).
    #: The input schema: ``{"inputs": [{"name", "type", "required"}], "outputs": [...]}``.
    signature: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    #: A few input rows, as JSON records.
    input_example: Mapped[list[Any] | None] = mapped_column(JSONB(none_as_null=True))
    #: ``{"python": ..., "sklearn": ..., "numpy": ..., "pandas": ...}`` that fitted it.
    environment: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))

    user: Mapped[User] = relationship(back_populates="models", lazy="raise_on_sql")
    job: Mapped[Job | None] = relationship(
        back_populates="models", lazy="raise_on_sql", foreign_keys="Model.job_id"
    )
    experiment_runs: Mapped[list[ExperimentRun]] = relationship(
        back_populates="model",
        lazy="raise_on_sql",
        passive_deletes=True,
        foreign_keys="ExperimentRun.model_id",
    )

    __table_args__ = (
        UniqueConstraint("id", "user_id"),
        CheckConstraint("size_bytes IS NULL OR size_bytes >= 0", name="size_nonnegative"),
        CheckConstraint(
            "jsonb_typeof(signature) = 'object' AND char_length(signature::text) <= 100000",
            name="signature_shape",
        ),
        CheckConstraint(
            "input_example IS NULL OR (jsonb_typeof(input_example) = 'array'"
            " AND char_length(input_example::text) <= 100000)",
            name="input_example_shape",
        ),
        CheckConstraint(
            "jsonb_typeof(environment) = 'object' AND char_length(environment::text) <= 10000",
            name="environment_shape",
        ),
        # A model comes from one of its owner's jobs.
        ForeignKeyConstraint(
            ["job_id", "user_id"],
            ["jobs.id", "jobs.user_id"],
            ondelete="SET NULL (job_id)",
        ),
        Index("ix_models_job_id_user_id", "job_id", "user_id"),
        Index("ix_models_user_id_created_at", "user_id", "created_at"),
    )
