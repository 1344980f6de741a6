"""The table of live workers (``workers``): heartbeats, clean exits, the count.

A worker process calls :func:`beat` when it starts and at every heartbeat (one
upsert by its name), and :func:`stopped` when it exits cleanly. It is *alive*
while not stopped and seen within ``STALE_LEASES`` of its own lease: a worker
killed hard, or cut from the database, stops beating and, after that long, is no
longer counted (its work is recovered after one lease, by the queue's rules).
:func:`prune` deletes rows gone quiet for ``PRUNE_AFTER``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ColumnElement, and_, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from database.models.worker import Worker

#: A worker not seen for this many of its leases is not alive.
STALE_LEASES = 2
#: Rows of workers stopped or silent for this long are deleted.
PRUNE_AFTER = dt.timedelta(days=7)


def alive() -> ColumnElement[bool]:
    """The condition a live worker's row meets (the database's clock decides)."""
    return and_(
        Worker.stopped_at.is_(None),
        Worker.last_seen_at
        > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, Worker.lease_seconds * STALE_LEASES),
    )


def beat(
    conn: Connection, *, name: str, hostname: str, pid: int, slots: int, lease_seconds: float
) -> None:
    """Record that the worker ``name`` is alive now (its first beat registers it)."""
    stmt = insert(Worker).values(
        name=name, hostname=hostname, pid=pid, slots=slots, lease_seconds=lease_seconds
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[Worker.name],
            set_={
                "last_seen_at": func.now(),
                "stopped_at": None,
                "slots": stmt.excluded.slots,
                "lease_seconds": stmt.excluded.lease_seconds,
            },
        )
    )


def stopped(conn: Connection, name: str) -> None:
    """The worker ``name`` exited cleanly: no longer alive."""
    conn.execute(
        update(Worker)
        .where(Worker.name == name, Worker.stopped_at.is_(None))
        .values(stopped_at=func.now(), last_seen_at=func.now())
    )


def alive_count(conn: Connection) -> int:
    """How many workers are alive."""
    return int(conn.scalar(select(func.count()).select_from(Worker).where(alive())) or 0)


def prune(conn: Connection, older_than: dt.timedelta = PRUNE_AFTER) -> int:
    """Delete the rows of workers stopped or silent for ``older_than``; how many."""
    result = conn.execute(
        delete(Worker).where(
            func.coalesce(Worker.stopped_at, Worker.last_seen_at) < func.now() - older_than
        )
    )
    return int(result.rowcount or 0)
