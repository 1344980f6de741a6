"""One execution of a workflow snapshot."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import JobKind, JobStatus, job_kind, job_status

if TYPE_CHECKING:
    from database.models.job_node import JobNode
    from database.models.model import Model
    from database.models.user import User
    from database.models.workflow_snapshot import WorkflowSnapshot


class Job(IDMixin, TimestampMixin, Base):
    __tablename__ = "jobs"

    # Time-ordered ids (PostgreSQL 18's uuidv7(), c16c00000001), like the ledger's:
    # a job is charged and refunded about when it runs, so the ledger's job index
    # (uq_credit_transactions_job_id_type) grows near its right edge, its
    # pages about 90% full instead of about 65% (issue 16, the ledger's weight;
    # docs/billing.md). A caller may still give its own id (any uuid).
    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("uuidv7()"), sort_order=-100
    )
    # Never changes (jobs_user_id_immutable, ML096, c16e00000001): the ledger's
    # charges and refunds name a job of their own user (sql/triggers/credit_ledger.sql).
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    workflow_snapshot_id: Mapped[uuid.UUID]
    # What the job is: the worker runs it with the handler registered for its kind.
    kind: Mapped[JobKind] = mapped_column(job_kind, server_default=JobKind.WORKFLOW_RUN.value)
    status: Mapped[JobStatus] = mapped_column(job_status, server_default=JobStatus.PENDING.value)
    credit_cost: Mapped[int] = mapped_column(server_default=text("0"))
    priority: Mapped[int] = mapped_column(server_default=text("0"))
    # The seed's name; it holds the task queue's job id, whichever queue runs it.
    celery_task_id: Mapped[str | None]
    results: Mapped[dict[str, Any] | None]
    error_message: Mapped[str | None]
    error_traceback: Mapped[str | None]
    started_at: Mapped[dt.datetime | None]
    completed_at: Mapped[dt.datetime | None]
    # Set when the owner cancels a running job: the worker running it stops before
    # the next node, marks it cancelled and refunds the charge.
    cancel_requested_at: Mapped[dt.datetime | None]
    # The queue (apps/workers): how many times a worker took the job, which worker
    # holds it now and until when. A lease not renewed in time is recovered.
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    leased_by: Mapped[str | None]
    lease_expires_at: Mapped[dt.datetime | None]
    # Not claimed before this time: a transient failure waits (backoff) before the
    # next attempt. NULL: at once.
    run_after: Mapped[dt.datetime | None]

    user: Mapped[User] = relationship(back_populates="jobs", lazy="raise_on_sql")
    workflow_snapshot: Mapped[WorkflowSnapshot] = relationship(
        back_populates="jobs", lazy="raise_on_sql", foreign_keys="Job.workflow_snapshot_id"
    )
    nodes: Mapped[list[JobNode]] = relationship(
        back_populates="job",
        lazy="raise_on_sql",
        passive_deletes=True,
        foreign_keys="JobNode.job_id",
    )
    models: Mapped[list[Model]] = relationship(
        back_populates="job",
        lazy="raise_on_sql",
        passive_deletes=True,
        foreign_keys="Model.job_id",
    )

    __table_args__ = (
        UniqueConstraint("id", "user_id"),
        # A job runs its owner's own snapshot. NO ACTION (checked at the end of the
        # statement, unlike RESTRICT): deleting a user cascades to both tables.
        ForeignKeyConstraint(
            ["workflow_snapshot_id", "user_id"],
            ["workflow_snapshots.id", "workflow_snapshots.user_id"],
        ),
        CheckConstraint("credit_cost >= 0", name="credit_cost_nonnegative"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        # Ingestions have their own table (ingestion_jobs).
        CheckConstraint("kind <> 'ingestion'", name="kind_not_ingestion"),
        # A lease names its worker and its end, and only a running job has one.
        CheckConstraint(
            "(leased_by IS NULL) = (lease_expires_at IS NULL)"
            " AND (leased_by IS NULL OR status = 'running')",
            name="lease_only_while_running",
        ),
        CheckConstraint(
            "completed_at IS NULL OR started_at IS NULL OR completed_at >= started_at",
            name="completed_after_started",
        ),
        Index("ix_jobs_workflow_snapshot_id_user_id", "workflow_snapshot_id", "user_id"),
        # A user's jobs newest first, and filtered by status.
        Index("ix_jobs_user_id_created_at", "user_id", "created_at"),
        Index("ix_jobs_user_id_status_created_at", "user_id", "status", "created_at"),
        # The queue: highest priority first, then oldest.
        Index(
            "ix_jobs_queue",
            text("priority DESC"),
            "created_at",
            postgresql_where=text("status = 'queued'"),
        ),
        # Recovery of leases whose worker stopped renewing them.
        Index(
            "ix_jobs_lease_expires_at",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
    )
