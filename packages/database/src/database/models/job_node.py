"""Status and output of one workflow node within a job."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import REAL, CheckConstraint, ForeignKeyConstraint, Index, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import NodeStatus, NodeType, node_status, node_type

if TYPE_CHECKING:
    from database.models.job import Job


class JobNode(IDMixin, TimestampMixin, Base):
    __tablename__ = "job_nodes"

    job_id: Mapped[uuid.UUID]
    # The job's owner, enforced by the composite foreign key below.
    user_id: Mapped[uuid.UUID]
    node_id: Mapped[str]
    node_type: Mapped[NodeType] = mapped_column(node_type)
    status: Mapped[NodeStatus] = mapped_column(node_status, server_default=NodeStatus.PENDING.value)
    output_data: Mapped[dict[str, Any] | None]
    error_message: Mapped[str | None]
    started_at: Mapped[dt.datetime | None]
    completed_at: Mapped[dt.datetime | None]
    # How far the node is, 0..1, and what it is doing now (the worker writes them
    # while it runs, at most once a second). The job_nodes_status_progress trigger
    # makes them follow the status: running starts at 0, success ends at 1, a reset
    # to pending starts over, and the message is cleared whenever the status moves.
    progress: Mapped[float] = mapped_column(REAL, server_default=text("0"))
    progress_message: Mapped[str | None]

    job: Mapped[Job] = relationship(
        back_populates="nodes", lazy="raise_on_sql", foreign_keys="JobNode.job_id"
    )

    __table_args__ = (
        ForeignKeyConstraint(
            ["job_id", "user_id"], ["jobs.id", "jobs.user_id"], ondelete="CASCADE"
        ),
        UniqueConstraint("job_id", "node_id"),
        # NaN is refused too: PostgreSQL orders it above every number.
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress_range"),
        CheckConstraint(
            "progress_message IS NULL OR char_length(progress_message) BETWEEN 1 AND 500",
            name="progress_message_length",
        ),
        Index("ix_job_nodes_user_id_job_id", "user_id", "job_id"),
    )
