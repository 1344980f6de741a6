"""The live workers: each worker process's heartbeat (``database.worker_registry``).

A worker upserts its row (by ``name``, the name it writes in its leases) when it
starts and at every heartbeat, and stamps ``stopped_at`` when it exits cleanly. A
worker is *alive* while it has not stopped and was seen within
``worker_registry.STALE_LEASES`` of its own lease (``lease_seconds``): a row older
than that belongs to a process that died (kill -9, a crash, a lost machine) and
is not counted. The API reads the count (``/readyz``, a queued job's
``waiting_for``); rows gone quiet for long are deleted by the workers' periodic
duties (``worker_registry.prune``).

There is no ``updated_at``: ``last_seen_at`` is the time of the last change.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import CheckConstraint, Index, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, IDMixin


class Worker(IDMixin, Base):
    __tablename__ = "workers"

    # host:pid:random, as in jobs.leased_by and ingestion_jobs.leased_by.
    name: Mapped[str]
    hostname: Mapped[str]
    pid: Mapped[int]
    slots: Mapped[int]
    # The worker's lease: how long its silence means nothing yet.
    lease_seconds: Mapped[float]
    started_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    last_seen_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    stopped_at: Mapped[dt.datetime | None]

    __table_args__ = (
        UniqueConstraint("name"),
        CheckConstraint("slots >= 1", name="slots_positive"),
        CheckConstraint("lease_seconds > 0", name="lease_seconds_positive"),
        CheckConstraint("pid > 0", name="pid_positive"),
        # The count of live workers reads only the rows not stopped.
        Index(
            "ix_workers_last_seen_at",
            "last_seen_at",
            postgresql_where=text("stopped_at IS NULL"),
        ),
    )
