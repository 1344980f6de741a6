"""One line of a job's log: what the worker and the database said while it ran."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, FetchedValue, ForeignKey, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base
from database.models.enums import LogLevel, log_level

if TYPE_CHECKING:
    from database.models.job import Job

#: Lines one job keeps at most (the CHECK on ``seq`` and the numbering trigger,
#: sql/triggers/job_logs.sql, say the same number).
MAX_LOG_LINES = 1000
#: Characters of one line at most (writers cut longer messages to this).
MAX_LOG_MESSAGE = 2000


class JobLog(Base):
    """A log line, numbered 1, 2, 3... within its job by the database.

    The key is ``(job_id, seq)``: one index serves the foreign key, the order of a
    job's lines, and the ``seq > :after`` reads of the event stream; no surrogate id
    to index on every write. ``seq`` is set by the ``job_logs_number`` trigger
    (whatever the client sends); together with ``ck_job_logs_seq_range`` that bounds
    a job's log to :data:`MAX_LOG_LINES` lines, for any client. Lines beyond the
    bound are dropped by the trigger (the last kept line says so).
    """

    __tablename__ = "job_logs"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(
        primary_key=True, autoincrement=False, server_default=FetchedValue()
    )
    created_at: Mapped[dt.datetime] = mapped_column(server_default=func.clock_timestamp())
    level: Mapped[LogLevel] = mapped_column(log_level, server_default=LogLevel.INFO.value)
    #: The workflow node the line is about (``job_nodes.node_id``), if any.
    node_id: Mapped[str | None]
    message: Mapped[str]

    job: Mapped[Job] = relationship(lazy="raise_on_sql")

    __table_args__ = (
        CheckConstraint(f"seq BETWEEN 1 AND {MAX_LOG_LINES}", name="seq_range"),
        CheckConstraint(
            f"char_length(message) BETWEEN 1 AND {MAX_LOG_MESSAGE}", name="message_length"
        ),
        CheckConstraint(
            "node_id IS NULL OR char_length(node_id) BETWEEN 1 AND 200", name="node_id_length"
        ),
    )


__all__ = ["MAX_LOG_LINES", "MAX_LOG_MESSAGE", "JobLog"]
