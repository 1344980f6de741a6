"""Every ``automl-db verify`` (and the worker's daily one), with its findings."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Index, func, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, IDMixin
from database.models.enums import ReconciliationKind, reconciliation_kind


class ReconciliationRun(IDMixin, Base):
    __tablename__ = "reconciliation_runs"

    kind: Mapped[ReconciliationKind] = mapped_column(reconciliation_kind)
    # Who started it: cli, worker, test...
    source: Mapped[str]
    run_by: Mapped[str] = mapped_column(server_default=text("session_user"))
    started_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[dt.datetime | None]
    users_checked: Mapped[int] = mapped_column(server_default=text("0"))
    drift_count: Mapped[int] = mapped_column(server_default=text("0"))
    unproduced_count: Mapped[int] = mapped_column(server_default=text("0"))
    repaired_count: Mapped[int] = mapped_column(server_default=text("0"))
    ok: Mapped[bool | None]
    findings: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))

    __table_args__ = (Index("ix_reconciliation_runs_started_at", "started_at"),)
