"""The queue is the database: claims, leases, heartbeats, release and recovery.

Two queues share these rules: ``jobs`` (workflow runs, ``queued`` -> ``running``)
and ``ingestion_jobs`` (uploads, ``pending`` -> ``processing``).

- A claim takes the next row with ``FOR UPDATE SKIP LOCKED`` (jobs by priority,
  then age; ingestions by age) and in the same statement marks it taken, by whom
  (``leased_by``) and until when (``lease_expires_at``), and counts the attempt.
  Two workers never take the same row: the second skips the locked one, and the
  row is no longer waiting once the first commits.
- The holder renews its lease (a heartbeat). Every write a worker makes about its
  work names its lease (``WHERE leased_by = :worker``): a worker whose lease was
  taken over finds nothing to update and stops (:class:`LeaseLost`).
- Recovery, run periodically by every worker: a lease that expired means its
  worker died. The work waits again (attempt < max) or is failed; a failed or
  cancelled job is refunded, once, through the ledger.
- Locks: a transaction that moves a user's credits or counters locks the user's
  row first, as the API does, so the two never wait for each other in a cycle.

``automl_queue`` is notified by the database (``sql/triggers/queue.sql``) when
work starts waiting; :mod:`workers.main` listens on it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from database import credits, errors

log = logging.getLogger(__name__)

Kind = Literal["job", "ingestion"]

#: The channel the queue's triggers notify.
CHANNEL = "automl_queue"


class LeaseLost(Exception):
    """This worker no longer holds the work's lease (it expired and was recovered)."""


@dataclass(frozen=True)
class Claim:
    kind: Kind
    id: uuid.UUID
    user_id: uuid.UUID
    attempts: int
    worker: str


_CLAIM_JOB = text(
    """
    UPDATE jobs AS j
       SET status = 'running', leased_by = :worker,
           lease_expires_at = now() + make_interval(secs => :lease),
           attempts = j.attempts + 1, started_at = coalesce(j.started_at, now())
     WHERE j.id = (SELECT q.id FROM jobs AS q
                    WHERE q.status = 'queued'
                    ORDER BY q.priority DESC, q.created_at
                    LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING j.id, j.user_id, j.attempts
    """
)

# The version goes to 'processing' with its ingestion: what the API shows.
_CLAIM_INGESTION = text(
    """
    WITH claimed AS (
        UPDATE ingestion_jobs AS i
           SET status = 'processing', leased_by = :worker,
               lease_expires_at = now() + make_interval(secs => :lease),
               attempts = i.attempts + 1, started_at = coalesce(i.started_at, now()),
               error_message = NULL
         WHERE i.id = (SELECT q.id FROM ingestion_jobs AS q
                        WHERE q.status = 'pending'
                        ORDER BY q.created_at
                        LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING i.id, i.user_id, i.attempts, i.dataset_version_id
    ), version AS (
        UPDATE dataset_versions AS v SET status = 'processing', error_message = NULL
          FROM claimed AS c
         WHERE v.id = c.dataset_version_id AND v.status <> 'completed'
    )
    SELECT id, user_id, attempts FROM claimed
    """
)


def claim(engine: Engine, kind: Kind, worker: str, lease_seconds: float) -> Claim | None:
    """Take the next waiting job (or ingestion) for ``worker``; None when none waits."""
    stmt = _CLAIM_JOB if kind == "job" else _CLAIM_INGESTION
    with engine.begin() as conn:
        row = conn.execute(stmt, {"worker": worker, "lease": lease_seconds}).one_or_none()
    if row is None:
        return None
    return Claim(kind=kind, id=row.id, user_id=row.user_id, attempts=row.attempts, worker=worker)


def _table(kind: Kind) -> str:
    return "jobs" if kind == "job" else "ingestion_jobs"


def _busy(kind: Kind) -> str:
    return "running" if kind == "job" else "processing"


def renew_all(engine: Engine, claims: list[Claim], lease_seconds: float) -> set[uuid.UUID]:
    """The heartbeat: renew every lease this worker holds; the ids whose lease is lost."""
    lost: set[uuid.UUID] = set()
    for kind in ("job", "ingestion"):
        ids = [c.id for c in claims if c.kind == kind]
        if not ids:
            continue
        worker = claims[0].worker
        with engine.begin() as conn:
            kept = set(
                conn.execute(
                    text(
                        f"UPDATE {_table(kind)}"
                        " SET lease_expires_at = now() + make_interval(secs => :lease)"
                        f" WHERE id = ANY(:ids) AND leased_by = :worker"
                        f" AND status = '{_busy(kind)}'"
                        " RETURNING id"
                    ),
                    {"ids": ids, "worker": worker, "lease": lease_seconds},
                ).scalars()
            )
        lost.update(set(ids) - kept)
    return lost


def check_job(conn: Connection, claim: Claim, lease_seconds: float) -> bool:
    """Between two nodes: renew the lease and say whether a cancel was asked.

    Raises :class:`LeaseLost` when the job is no longer this worker's.
    """
    row = conn.execute(
        text(
            "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease)"
            " WHERE id = :id AND leased_by = :worker AND status = 'running'"
            " RETURNING cancel_requested_at"
        ),
        {"id": claim.id, "worker": claim.worker, "lease": lease_seconds},
    ).one_or_none()
    if row is None:
        raise LeaseLost(f"job {claim.id}: the lease of {claim.worker} was lost")
    return row.cancel_requested_at is not None


# --- ending a job ------------------------------------------------------------------------
def _refund(session: Session, job_id: uuid.UUID, user_id: uuid.UUID, reason: str) -> int:
    """Refund the job's charge once; 0 when it was free or never charged."""
    try:
        entry = credits.refund_job(session, job_id, reason, user=user_id)
    except errors.JobNotCharged:
        return 0
    return entry.amount


def finish_job(
    session: Session,
    claim: Claim,
    status: Literal["completed", "failed", "cancelled"],
    *,
    results: dict[str, object] | None = None,
    error: str | None = None,
    traceback: str | None = None,
) -> int:
    """End the job this worker holds, in one transaction, refunding a failed or
    cancelled one; returns the credits refunded. Raises :class:`LeaseLost`."""
    with session.begin():
        credits.lock_users(session, [claim.user_id])  # the API's lock order: user, then job
        ended = session.execute(
            text(
                "UPDATE jobs SET status = CAST(:status AS job_status),"
                " results = coalesce(CAST(:results AS jsonb), results),"
                " error_message = :error, error_traceback = :traceback,"
                " completed_at = clock_timestamp(), leased_by = NULL, lease_expires_at = NULL"
                " WHERE id = :id AND leased_by = :worker AND status = 'running' RETURNING id"
            ),
            {
                "status": status,
                "results": _json(results),
                "error": error,
                "traceback": traceback,
                "id": claim.id,
                "worker": claim.worker,
            },
        ).one_or_none()
        if ended is None:
            raise LeaseLost(f"job {claim.id}: the lease of {claim.worker} was lost")
        refunded = 0
        if status != "completed":
            refunded = _refund(session, claim.id, claim.user_id, error or f"job {status}")
    return refunded


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value, allow_nan=False)


_RESET_NODES = text(
    "UPDATE job_nodes SET status = 'pending', output_data = NULL, error_message = NULL,"
    " started_at = NULL, completed_at = NULL WHERE job_id = :id AND status <> 'pending'"
)
# Models saved by an attempt that did not finish: the next attempt saves its own.
_DROP_MODELS = text("DELETE FROM models WHERE job_id = :id RETURNING s3_path")


def release(session: Session, claim: Claim) -> list[str]:
    """Give the job back to the queue (a worker stopping): it waits again, this
    attempt not counted. Returns artifact locations to remove. Raises LeaseLost."""
    with session.begin():
        credits.lock_users(session, [claim.user_id])
        if claim.kind == "job":
            done = session.execute(
                text(
                    "UPDATE jobs SET status = 'queued', leased_by = NULL, lease_expires_at = NULL,"
                    " attempts = greatest(attempts - 1, 0)"
                    " WHERE id = :id AND leased_by = :worker AND status = 'running' RETURNING id"
                ),
                {"id": claim.id, "worker": claim.worker},
            ).one_or_none()
            if done is None:
                raise LeaseLost(f"job {claim.id}: the lease of {claim.worker} was lost")
            session.execute(_RESET_NODES, {"id": claim.id})
            return [p for p in session.execute(_DROP_MODELS, {"id": claim.id}).scalars() if p]
        done = session.execute(
            text(
                "UPDATE ingestion_jobs SET status = 'pending', leased_by = NULL,"
                " lease_expires_at = NULL, attempts = greatest(attempts - 1, 0)"
                " WHERE id = :id AND leased_by = :worker AND status = 'processing'"
                " RETURNING dataset_version_id"
            ),
            {"id": claim.id, "worker": claim.worker},
        ).one_or_none()
        if done is None:
            raise LeaseLost(f"ingestion {claim.id}: the lease of {claim.worker} was lost")
        session.execute(
            text(
                "UPDATE dataset_versions SET status = 'pending'"
                " WHERE id = :v AND status = 'processing'"
            ),
            {"v": done.dataset_version_id},
        )
        return []


# --- recovery ----------------------------------------------------------------------------
@dataclass
class Recovered:
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    refunded_credits: int = 0


def _expired(conn: Connection, kind: Kind, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    return [
        (r.id, r.user_id)
        for r in conn.execute(
            text(
                f"SELECT id, user_id FROM {_table(kind)}"
                f" WHERE status = '{_busy(kind)}' AND lease_expires_at < now()"
                " ORDER BY lease_expires_at LIMIT :n"
            ),
            {"n": limit},
        )
    ]


def recover_expired(
    engine: Engine,
    max_attempts: int,
    *,
    limit: int = 100,
    remove_file: Callable[[str], object] | None = None,
) -> Recovered:
    """Take back work whose lease expired: wait again, or fail (and refund) a job
    that used up its attempts; a job whose cancel was asked is cancelled. One
    transaction per row; rows another worker is recovering are skipped."""
    out = Recovered()
    with engine.connect() as conn:
        jobs = _expired(conn, "job", limit)
        ingestions = _expired(conn, "ingestion", limit)
    for job_id, user_id in jobs:
        with Session(engine) as session:
            files = _recover_job(session, job_id, user_id, max_attempts, out)
        for location in files:
            if remove_file is not None:
                remove_file(location)
    for ingestion_id, user_id in ingestions:
        with Session(engine) as session:
            _recover_ingestion(session, ingestion_id, user_id, max_attempts, out)
    if jobs or ingestions:
        log.info(
            "recovered expired leases: %d requeued, %d failed, %d cancelled",
            out.requeued,
            out.failed,
            out.cancelled,
        )
    return out


def _recover_job(
    session: Session, job_id: uuid.UUID, user_id: uuid.UUID, max_attempts: int, out: Recovered
) -> list[str]:
    with session.begin():
        try:
            credits.lock_users(session, [user_id])
        except errors.UserNotFound:
            return []
        row = session.execute(
            text(
                "SELECT attempts, cancel_requested_at FROM jobs WHERE id = :id"
                " AND status = 'running' AND lease_expires_at < now() FOR UPDATE SKIP LOCKED"
            ),
            {"id": job_id},
        ).one_or_none()
        if row is None:  # renewed, finished, or taken by another recovery meanwhile
            return []
        session.execute(_RESET_NODES, {"id": job_id})
        files = [p for p in session.execute(_DROP_MODELS, {"id": job_id}).scalars() if p]
        if row.cancel_requested_at is None and row.attempts < max_attempts:
            session.execute(
                text(
                    "UPDATE jobs SET status = 'queued', leased_by = NULL, lease_expires_at = NULL"
                    " WHERE id = :id"
                ),
                {"id": job_id},
            )
            out.requeued += 1
            return files
        if row.cancel_requested_at is not None:
            status, reason = "cancelled", "cancelled while its worker was lost"
            out.cancelled += 1
        else:
            status = "failed"
            reason = f"its worker stopped responding {row.attempts} times; the job was given up"
            out.failed += 1
        session.execute(
            text(
                "UPDATE jobs SET status = CAST(:status AS job_status), error_message = :reason,"
                " completed_at = clock_timestamp(), leased_by = NULL, lease_expires_at = NULL"
                " WHERE id = :id"
            ),
            {"id": job_id, "status": status, "reason": reason},
        )
        session.execute(
            text(
                "UPDATE job_nodes SET status = 'skipped', error_message = :reason"
                " WHERE job_id = :id AND status = 'pending'"
            ),
            {"id": job_id, "reason": reason},
        )
        out.refunded_credits += _refund(session, job_id, user_id, reason)
    return files


def _recover_ingestion(
    session: Session,
    ingestion_id: uuid.UUID,
    user_id: uuid.UUID,
    max_attempts: int,
    out: Recovered,
) -> None:
    with session.begin():
        try:
            credits.lock_users(session, [user_id])
        except errors.UserNotFound:
            return
        row = session.execute(
            text(
                "SELECT attempts, dataset_version_id FROM ingestion_jobs WHERE id = :id"
                " AND status = 'processing' AND lease_expires_at < now() FOR UPDATE SKIP LOCKED"
            ),
            {"id": ingestion_id},
        ).one_or_none()
        if row is None:
            return
        if row.attempts < max_attempts:
            status, reason = "pending", None
            out.requeued += 1
        else:
            status = "failed"
            reason = f"its worker stopped responding {row.attempts} times; ingestion was given up"
            out.failed += 1
        session.execute(
            text(
                "UPDATE ingestion_jobs SET status = CAST(:status AS ingestion_status),"
                " error_message = :reason, leased_by = NULL, lease_expires_at = NULL,"
                " completed_at = CASE WHEN CAST(:status AS text) = 'failed'"
                " THEN clock_timestamp() END"
                " WHERE id = :id"
            ),
            {"id": ingestion_id, "status": status, "reason": reason},
        )
        session.execute(
            text(
                "UPDATE dataset_versions SET status = CAST(:status AS ingestion_status),"
                " error_message = :reason WHERE id = :v AND status = 'processing'"
            ),
            {"v": row.dataset_version_id, "status": status, "reason": reason},
        )
