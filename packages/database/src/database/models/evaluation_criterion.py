"""A user's named evaluation rule: a metric threshold or a per-row rule, maybe on a slice."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import CheckConstraint, Double, ForeignKey, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import (
    CriterionKind,
    CriterionOperator,
    RowRule,
    criterion_kind,
    criterion_operator,
    row_rule,
)


class EvaluationCriterion(IDMixin, CreatedAtMixin, Base):
    """``metric_threshold``: ``metric operator threshold`` (``accuracy >= 0.9``);
    ``row_rule``: ``absolute_error_le`` (``tolerance``) or ``predicted_equals_actual``.
    ``slice`` is structured (``{"column": "region", "equals": "EU"}``), never SQL text.
    The CHECKs below say which fields each kind has (docs/evaluation.md)."""

    __tablename__ = "evaluation_criteria"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str]
    kind: Mapped[CriterionKind] = mapped_column(criterion_kind)
    metric: Mapped[str | None]
    operator: Mapped[CriterionOperator | None] = mapped_column(criterion_operator)
    threshold: Mapped[float | None] = mapped_column(Double)
    rule: Mapped[RowRule | None] = mapped_column(row_rule)
    tolerance: Mapped[float | None] = mapped_column(Double)
    slice: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))

    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        UniqueConstraint("id", "user_id"),
        CheckConstraint("char_length(name) BETWEEN 1 AND 200", name="name_length"),
        CheckConstraint(
            "kind <> 'metric_threshold' OR (metric IS NOT NULL AND operator IS NOT NULL"
            " AND threshold IS NOT NULL AND rule IS NULL AND tolerance IS NULL)",
            name="metric_threshold_shape",
        ),
        CheckConstraint(
            "kind <> 'row_rule' OR (rule IS NOT NULL AND metric IS NULL AND operator IS NULL"
            " AND threshold IS NULL"
            " AND (tolerance IS NOT NULL) = (rule = 'absolute_error_le'))",
            name="row_rule_shape",
        ),
        CheckConstraint("metric IS NULL OR metric ~ '^[a-z][a-z0-9_]{0,63}$'", name="metric_name"),
        CheckConstraint(
            "threshold IS NULL OR threshold NOT IN ('NaN', 'Infinity', '-Infinity')",
            name="threshold_finite",
        ),
        CheckConstraint(
            "tolerance IS NULL OR (tolerance >= 0 AND tolerance < 'Infinity')",
            name="tolerance_nonnegative",
        ),
        CheckConstraint(
            "slice IS NULL OR (jsonb_typeof(slice) = 'object'"
            " AND slice - 'column' - 'equals' = '{}'::jsonb"
            " AND jsonb_typeof(slice -> 'column') = 'string'"
            " AND char_length(slice ->> 'column') BETWEEN 1 AND 200"
            " AND jsonb_typeof(slice -> 'equals') IN ('string', 'number', 'boolean')"
            " AND char_length(slice::text) <= 1000)",
            name="slice_shape",
        ),
    )


__all__ = ["EvaluationCriterion"]
