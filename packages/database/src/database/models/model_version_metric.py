"""One score of a model version: (metric, split) -> value, searchable through an index."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, Double, ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base

if TYPE_CHECKING:
    from database.models.model_version import ModelVersion


class ModelVersionMetric(Base):
    """A metric as a row, keyed ``(model_version_id, metric, split)``.

    ``ix_model_version_metrics_metric_split_value`` serves a search or an order by
    one metric on one split (``metrics.accuracy > 0.9``) without reading the others.
    Values are finite (NaN sorts above everything in PostgreSQL and would top every
    ranking).
    """

    __tablename__ = "model_version_metrics"

    model_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    metric: Mapped[str] = mapped_column(primary_key=True)
    #: ``test`` unless said otherwise: ``train``, ``validation``, ``cv``...
    split: Mapped[str] = mapped_column(primary_key=True)
    value: Mapped[float] = mapped_column(Double)

    model_version: Mapped[ModelVersion] = relationship(
        back_populates="metrics", lazy="raise_on_sql"
    )

    __table_args__ = (
        CheckConstraint("metric ~ '^[A-Za-z][A-Za-z0-9_.-]{0,99}$'", name="metric_name"),
        CheckConstraint("split ~ '^[a-z][a-z0-9_]{0,31}$'", name="split_name"),
        CheckConstraint(
            "value <> 'NaN'::float8 AND value <> 'Infinity'::float8"
            " AND value <> '-Infinity'::float8",
            name="value_finite",
        ),
        Index("ix_model_version_metrics_metric_split_value", "metric", "split", "value"),
    )


__all__ = ["ModelVersionMetric"]
