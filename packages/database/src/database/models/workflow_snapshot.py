"""Immutable copy of a workflow, frozen when a job is created from it."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import ForeignKey, Index, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, CreatedAtMixin, IDMixin

if TYPE_CHECKING:
    from database.models.job import Job
    from database.models.user import User
    from database.models.workflow import Workflow


class WorkflowSnapshot(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "workflow_snapshots"

    # NULL once the source workflow is deleted; the snapshot and its jobs remain.
    workflow_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("workflows.id", ondelete="SET NULL")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    snapshot_data: Mapped[dict[str, Any]]

    workflow: Mapped[Workflow | None] = relationship(
        back_populates="snapshots", lazy="raise_on_sql", foreign_keys="WorkflowSnapshot.workflow_id"
    )
    user: Mapped[User] = relationship(lazy="raise_on_sql", viewonly=True)
    jobs: Mapped[list[Job]] = relationship(
        back_populates="workflow_snapshot",
        lazy="raise_on_sql",
        foreign_keys="Job.workflow_snapshot_id",
        viewonly=True,
    )

    __table_args__ = (
        UniqueConstraint("id", "user_id"),
        Index("ix_workflow_snapshots_workflow_id", "workflow_id"),
        Index("ix_workflow_snapshots_user_id_created_at", "user_id", "created_at"),
    )
