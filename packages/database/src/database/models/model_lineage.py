"""An edge of a model version's lineage: what it came from."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import LineageRelation, lineage_relation

if TYPE_CHECKING:
    from database.models.model_version import ModelVersion

#: Which parent column each relation names (``ck_model_lineage_relation_parent``).
RELATION_PARENT: dict[LineageRelation, tuple[str, ...]] = {
    LineageRelation.TRAINED_ON: ("dataset_version_id",),
    LineageRelation.EVALUATED_ON: ("dataset_version_id",),
    LineageRelation.PRODUCED_BY: ("job_id", "workflow_snapshot_id"),
    LineageRelation.RETRAINED_FROM: ("parent_version_id",),
    LineageRelation.TUNED_FROM: ("parent_version_id",),
}


class ModelLineage(IDMixin, CreatedAtMixin, Base):
    """``child_version_id`` --relation--> exactly one parent: another model version, a
    dataset version, a workflow snapshot or a job.

    Every parent column has its own index, so both directions of the recursive
    query (``database.registry.lineage``) read an index: up from the child, down from
    a parent. An edge goes with either end (ON DELETE CASCADE): the exactly-one CHECK
    leaves no edge pointing at nothing. An edge is recorded once (the unique key,
    NULLS NOT DISTINCT).
    """

    __tablename__ = "model_lineage"

    child_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    relation: Mapped[LineageRelation] = mapped_column(lineage_relation)
    parent_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    dataset_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True
    )
    workflow_snapshot_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("workflow_snapshots.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )

    child: Mapped[ModelVersion] = relationship(
        lazy="raise_on_sql", foreign_keys="ModelLineage.child_version_id"
    )

    __table_args__ = (
        UniqueConstraint(
            "child_version_id",
            "relation",
            "parent_version_id",
            "dataset_version_id",
            "workflow_snapshot_id",
            "job_id",
            name="uq_model_lineage_edge",
            postgresql_nulls_not_distinct=True,
        ),
        CheckConstraint(
            "num_nonnulls(parent_version_id, dataset_version_id, workflow_snapshot_id, job_id) = 1",
            name="one_parent",
        ),
        CheckConstraint(
            "CASE relation"
            " WHEN 'trained_on' THEN dataset_version_id IS NOT NULL"
            " WHEN 'evaluated_on' THEN dataset_version_id IS NOT NULL"
            " WHEN 'produced_by' THEN job_id IS NOT NULL OR workflow_snapshot_id IS NOT NULL"
            " ELSE parent_version_id IS NOT NULL END",
            name="relation_parent",
        ),
        CheckConstraint(
            "parent_version_id IS DISTINCT FROM child_version_id", name="not_own_parent"
        ),
    )


__all__ = ["RELATION_PARENT", "ModelLineage"]
