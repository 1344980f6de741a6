"""What the database tells the metrics (docs/metrics.md): the queue and the workers
at this moment, and the credits the ledger moved in this process.

- :func:`queue_snapshot`: one statement, run when ``/metrics`` is scraped: the work
  waiting and in progress by queue, kind and status, the age of the oldest waiting
  piece, and the live workers (``database.worker_registry``). It reads only the
  rows that wait or run, through the queues' partial indexes (``ix_jobs_queue``,
  ``ix_jobs_lease_expires_at``, ``ix_ingestion_jobs_pending_created_at``,
  ``ix_ingestion_jobs_lease_expires_at``), so its cost follows the queue's depth,
  never the tables' history.
- :func:`on_ledger_commit`: calls back with each ledger entry (type, amount) a
  session of this process committed: the ``credits`` counters count what was
  really written, never what a rolled back transaction tried.

No third-party metrics library here: the apps own the series (``api.metrics``,
``workers.metrics``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, Text, event, func, literal, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction, UOWTransaction

from database import worker_registry
from database.models import CreditTransaction, IngestionJob, Job, JobKind, Worker
from database.models.enums import IngestionStatus, JobStatus, TransactionType


@dataclass(frozen=True)
class QueueRow:
    """Work of one queue, kind and status: how many, and since when the oldest waits."""

    queue: str
    kind: str
    status: str
    count: int
    #: Seconds since the oldest of them became due (``run_after``, else created);
    #: None for work in progress.
    oldest_wait_seconds: float | None


@dataclass(frozen=True)
class QueueSnapshot:
    rows: list[QueueRow] = field(default_factory=list)
    workers_alive: int = 0
    #: Slots of the live workers: how much work may run at once.
    worker_slots: int = 0


_WAITING = (JobStatus.QUEUED, IngestionStatus.PENDING)


def _wait_age(ready_at: Any, status: Any, waiting: Any) -> Any:
    """Seconds since the oldest waiting row became due (a row due later counts 0)."""
    age = func.max(func.extract("epoch", func.now() - ready_at))
    return age.filter(status == waiting)


def _snapshot_statement() -> Any:
    job_ready = func.coalesce(Job.run_after, Job.created_at)
    jobs = (
        select(
            literal("job").label("queue"),
            Job.kind.label("kind"),
            Job.status.label("status"),
            func.count().label("n"),
            _wait_age(job_ready, Job.status, JobStatus.QUEUED).label("value"),
        )
        .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .group_by(Job.kind, Job.status)
    )
    ingestion_ready = func.coalesce(IngestionJob.run_after, IngestionJob.created_at)
    ingestions = (
        select(
            literal("ingestion").label("queue"),
            literal(JobKind.INGESTION.value).label("kind"),
            IngestionJob.status.label("status"),
            func.count().label("n"),
            _wait_age(ingestion_ready, IngestionJob.status, IngestionStatus.PENDING).label("value"),
        )
        .where(IngestionJob.status.in_([IngestionStatus.PENDING, IngestionStatus.PROCESSING]))
        .group_by(IngestionJob.status)
    )
    workers = select(
        literal("workers").label("queue"),
        literal("").label("kind"),
        literal("alive").label("status"),
        func.count().label("n"),
        func.coalesce(func.sum(Worker.slots), 0).label("value"),
    ).where(worker_registry.alive())

    def text_columns(stmt: Any) -> Any:
        # One shape for the union: kind and status as text, the value as a float
        # (the oldest wait's age, or the live workers' slots).
        sub = stmt.subquery()
        return select(
            sub.c.queue,
            sub.c.kind.cast(Text),
            sub.c.status.cast(Text),
            sub.c.n,
            sub.c.value.cast(Float),
        )

    return union_all(text_columns(jobs), text_columns(ingestions), text_columns(workers))


_SNAPSHOT = _snapshot_statement()


def queue_snapshot(conn: Connection | Session) -> QueueSnapshot:
    """The queues and the workers now (one statement). Kinds and statuses with no
    work are absent: the caller reports them as 0."""
    rows: list[QueueRow] = []
    alive = slots = 0
    for queue, kind, status, count, value in conn.execute(_SNAPSHOT):
        if queue == "workers":
            alive, slots = int(count), int(value or 0)
            continue
        waiting = status in _WAITING
        rows.append(
            QueueRow(
                queue=queue,
                kind=kind,
                status=status,
                count=int(count),
                oldest_wait_seconds=(
                    max(0.0, float(value)) if waiting and value is not None else None
                ),
            )
        )
    return QueueSnapshot(rows=rows, workers_alive=alive, worker_slots=slots)


# --- the ledger's entries, as committed ---------------------------------------------------
LedgerCallback = Callable[[TransactionType, int], None]
_callbacks: dict[object, LedgerCallback] = {}
#: ``session.info`` key: the entries flushed and not yet committed, each with the
#: (innermost) transaction it was flushed in.
_KEY = "telemetry_ledger"


def on_ledger_commit(callback: LedgerCallback, key: str | None = None) -> None:
    """Call ``callback(type, amount)`` for each ledger entry a session of this process
    commits (amount as written: negative for a consumption). An entry of a rolled
    back transaction or savepoint is not reported. One callback per ``key`` (default:
    the callback itself): a second registration is ignored. The session hooks are
    installed with the first callback."""
    name = key or callback
    if name in _callbacks:
        return
    _callbacks[name] = callback
    if not event.contains(Session, "after_flush", _after_flush):
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", _after_rollback)


def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    # After a flush, ``session.new`` still lists what the flush inserted.
    entries = [
        (entry.type, entry.amount)
        for entry in session.new
        if isinstance(entry, CreditTransaction) and entry.amount is not None
    ]
    if entries:
        current = session.get_nested_transaction() or session.get_transaction()
        session.info.setdefault(_KEY, []).extend((current, *e) for e in entries)


def _after_commit(session: Session) -> None:
    # Fired for a savepoint's release too (the savepoint is still the session's
    # current transaction then): only the outermost commit writes.
    if session.in_nested_transaction():
        return
    entries = session.info.pop(_KEY, None)
    for _, kind, amount in entries or ():
        for callback in list(_callbacks.values()):
            # A metric never breaks a commit that already happened.
            with contextlib.suppress(Exception):
                callback(TransactionType(kind), int(amount))


def _inside(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


def _after_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    """What was flushed in the rolled back transaction (or savepoint) was not written."""
    entries = session.info.get(_KEY)
    if entries:
        kept = [e for e in entries if not _inside(e[0], previous_transaction)]
        if kept:
            session.info[_KEY] = kept
        else:
            session.info.pop(_KEY, None)
