"""A user's editable ML pipeline design."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin

if TYPE_CHECKING:
    from database.models.job import Job
    from database.models.user import User
    from database.models.workflow_snapshot import WorkflowSnapshot


class Workflow(IDMixin, TimestampMixin, Base):
    __tablename__ = "workflows"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str]
    description: Mapped[str | None]
    # {"nodes": [{"id", "type", "config"}], "edges": [{"source", "target"}]}
    definition: Mapped[dict[str, Any]] = mapped_column(
        server_default=text("""'{"nodes": [], "edges": []}'::jsonb""")
    )
    is_deleted: Mapped[bool] = mapped_column(server_default=text("false"))
    deleted_at: Mapped[dt.datetime | None]

    user: Mapped[User] = relationship(back_populates="workflows", lazy="raise_on_sql")
    # passive_deletes="all": the database's ON DELETE SET NULL detaches snapshots;
    # the ORM must not try (snapshots refuse a client's UPDATE).
    snapshots: Mapped[list[WorkflowSnapshot]] = relationship(
        back_populates="workflow",
        lazy="raise_on_sql",
        passive_deletes="all",
        foreign_keys="WorkflowSnapshot.workflow_id",
    )
    # Jobs run from this workflow's snapshots (read-only: jobs are created from a snapshot).
    jobs: Mapped[list[Job]] = relationship(
        secondary="workflow_snapshots",
        primaryjoin="Workflow.id == WorkflowSnapshot.workflow_id",
        secondaryjoin="WorkflowSnapshot.id == Job.workflow_snapshot_id",
        viewonly=True,
        lazy="raise_on_sql",
    )

    __table_args__ = (
        CheckConstraint("is_deleted = (deleted_at IS NOT NULL)", name="soft_delete_consistent"),
        CheckConstraint("jsonb_typeof(definition) = 'object'", name="definition_is_object"),
        Index("ix_workflows_user_id_created_at", "user_id", "created_at"),
        Index("ix_workflows_deleted_at", "deleted_at", postgresql_where=text("is_deleted")),
    )
