"""One row's result in an evaluation run (hash-partitioned on the run; written with COPY)."""

from __future__ import annotations

import uuid

from sqlalchemy import ARRAY, BigInteger, Boolean, Double, ForeignKey, Index, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base

#: Hash partitions of ``evaluation_row_results`` (created by the migration).
ROW_RESULT_PARTITIONS = 8


class EvaluationRowResult(Base):
    """``prediction`` and ``actual`` as text (a class label or a number, as the
    dataset holds it); ``error`` the absolute error (regression) or 0/1
    (classification: 1 when the class is wrong); ``score`` the predicted probability
    of the positive class (binary classification); ``criteria_passed[i]`` the row's
    result for the run's i-th row rule (NULL when the row is outside its slice);
    ``passed`` every applicable row rule passed.

    Partitioned by HASH (evaluation_run_id) into :data:`ROW_RESULT_PARTITIONS`
    tables, rows removed with their run through the foreign key (docs/evaluation.md
    says why not a partition per run)."""

    __tablename__ = "evaluation_row_results"

    evaluation_run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("evaluation_runs.id", ondelete="CASCADE"), primary_key=True
    )
    row_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    prediction: Mapped[str | None]
    actual: Mapped[str | None]
    score: Mapped[float | None] = mapped_column(Double)
    error: Mapped[float | None] = mapped_column(Double)
    criteria_passed: Mapped[list[bool | None]] = mapped_column(
        ARRAY(Boolean), server_default=text("'{}'::boolean[]")
    )
    passed: Mapped[bool]

    __table_args__ = (
        # Pages of failing rows: (run, row_index) keyset over the failing ones only.
        Index(
            "ix_evaluation_row_results_failing",
            "evaluation_run_id",
            "row_index",
            postgresql_where=text("NOT passed"),
        ),
        {"postgresql_partition_by": "HASH (evaluation_run_id)"},
    )


__all__ = ["EvaluationRowResult", "ROW_RESULT_PARTITIONS"]
