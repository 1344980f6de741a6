"""What the database tells the metrics (docs/metrics.md): the queue and the workers
at this moment, and the credits the ledger moved in this process.

- :func:`queue_snapshot`: one statement, run when ``/metrics`` is scraped: the work
  waiting and in progress by queue, kind and status, the age of the oldest waiting
  piece, and the live workers (``database.worker_registry``). It reads only the
  rows that wait or run, through the queues' partial indexes (``ix_jobs_queue``,
  ``ix_jobs_lease_expires_at``, ``ix_ingestion_jobs_pending_created_at``,
  ``ix_ingestion_jobs_lease_expires_at``), so its cost follows the queue's depth,
  never the tables' history.
- :class:`LedgerTotals`: the credits and entries of the ledger by type, read in
  that same statement, so every committed entry is counted whoever wrote it: the
  apps through the ORM, an operator through ``public.credit_adjust()`` or raw SQL,
  a trigger. A full count per scrape would read the whole ledger each time; the
  ledger's ids are ``uuidv7()`` (time-ordered), so each scrape reads only the
  entries past a *settled* boundary through the primary key, adds those older than
  ``horizon_seconds`` to the settled totals for good and moves the boundary up to
  them. The entries of the last ``horizon_seconds`` are read again at every scrape:
  an entry whose transaction commits after a later one's was read is counted at
  the first scrape that sees it, provided it commits within the horizon (15
  minutes) of taking its id; the ledger's writers are short transactions. The first
  scrape of a process reads the whole ledger once. Totals only grow: what
  ``automl-db purge`` removes of a long-deleted user was settled long before.

No third-party metrics library here: the apps own the series (``api.metrics``,
``workers.metrics``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    Text,
    bindparam,
    case,
    cast,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from database import worker_registry
from database.models import CreditTransaction, IngestionJob, Job, JobKind, Worker
from database.models.enums import IngestionStatus, JobStatus


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
class LedgerTotal:
    """The ledger's entries of one type: how many, and the credits they moved
    (absolute values: a consumption's negative amount counts as positive)."""

    entries: int = 0
    credits: int = 0

    def __add__(self, other: LedgerTotal) -> LedgerTotal:
        return LedgerTotal(self.entries + other.entries, self.credits + other.credits)


@dataclass(frozen=True)
class QueueSnapshot:
    rows: list[QueueRow] = field(default_factory=list)
    workers_alive: int = 0
    #: Slots of the live workers: how much work may run at once.
    worker_slots: int = 0
    #: Every committed ledger entry, by type (``credit_transactions.type``).
    ledger: dict[str, LedgerTotal] = field(default_factory=dict)


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

    # The ledger past the settled boundary (milliseconds since the epoch, as the
    # first 48 bits of a uuidv7): by type, split at the new boundary (now minus the
    # horizon, never below the old one), and the new boundary itself.
    settled_from = bindparam("ledger_from_ms", type_=BigInteger)
    horizon = bindparam("ledger_horizon_ms", type_=BigInteger)
    now_ms = cast(func.floor(func.extract("epoch", func.now()) * 1000), BigInteger)
    settle_to = func.greatest(settled_from, now_ms - horizon)
    ledger_type = CreditTransaction.type.cast(Text)
    settled = case((CreditTransaction.id < _ms_uuid(settle_to), "settled"), else_="tail")
    ledger = (
        select(
            literal("ledger").label("queue"),
            ledger_type.label("kind"),
            settled.label("status"),
            func.count().label("n"),
            func.sum(func.abs(CreditTransaction.amount)).label("value"),
        )
        .where(CreditTransaction.id >= _ms_uuid(settled_from))
        .group_by(ledger_type, settled)
    )
    boundary = select(
        literal("ledger_settled").label("queue"),
        literal("").label("kind"),
        literal("").label("status"),
        literal(0, BigInteger).label("n"),
        settle_to.label("value"),
    )
    return union_all(
        text_columns(jobs),
        text_columns(ingestions),
        text_columns(workers),
        text_columns(ledger),
        text_columns(boundary),
    )


def _ms_uuid(ms: Any) -> Any:
    """The smallest uuid of millisecond ``ms``: uuidv7 puts the Unix time in
    milliseconds in its first 48 bits, and uuids compare byte by byte."""
    return cast(func.lpad(func.to_hex(ms), 12, "0").concat("0" * 20), UUID(as_uuid=True))


_SNAPSHOT = _snapshot_statement()


class LedgerTotals:
    """The ledger's totals by type as this process has read them (see the module's
    doc): the settled part and its boundary, kept between scrapes. One per database
    a process scrapes (the API keeps one in its app state). Thread-safe: a scrape
    holds its lock from the statement to the update, so two scrapes never add the
    same entries twice."""

    def __init__(self, horizon_seconds: float = 900.0) -> None:
        self.horizon_ms = int(horizon_seconds * 1000)
        self.settled_ms = 0
        self.settled: dict[str, LedgerTotal] = {}
        self.lock = threading.Lock()

    def params(self) -> dict[str, int]:
        return {"ledger_from_ms": self.settled_ms, "ledger_horizon_ms": self.horizon_ms}

    def update(self, rows: list[tuple[str, str, int, float | None]]) -> dict[str, LedgerTotal]:
        """Fold a scrape's ledger rows ((kind, status, n, value), and the boundary's)
        in; the totals now (settled plus the tail just read)."""
        tail: dict[str, LedgerTotal] = {}
        for kind, status, n, value in rows:
            if kind == "" and status == "":  # the new boundary
                self.settled_ms = max(self.settled_ms, int(value or 0))
                continue
            part = LedgerTotal(int(n), int(value or 0))
            if status == "settled":
                self.settled[kind] = self.settled.get(kind, LedgerTotal()) + part
            else:
                tail[kind] = part
        return {
            kind: self.settled.get(kind, LedgerTotal()) + tail.get(kind, LedgerTotal())
            for kind in sorted(set(self.settled) | set(tail))
        }


def queue_snapshot(conn: Connection | Session, ledger: LedgerTotals | None = None) -> QueueSnapshot:
    """The queues, the workers and the ledger's totals now (one statement). Kinds
    and statuses with no work are absent: the caller reports them as 0. ``ledger``
    keeps what earlier scrapes settled (None: a fresh one, which reads the whole
    ledger)."""
    ledger = ledger if ledger is not None else LedgerTotals()
    rows: list[QueueRow] = []
    alive = slots = 0
    with ledger.lock:
        ledger_rows: list[tuple[str, str, int, float | None]] = []
        for queue, kind, status, count, value in conn.execute(_SNAPSHOT, ledger.params()):
            if queue in ("ledger", "ledger_settled"):
                ledger_rows.append((kind, status, count, value))
                continue
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
        totals = ledger.update(ledger_rows)
    return QueueSnapshot(rows=rows, workers_alive=alive, worker_slots=slots, ledger=totals)
