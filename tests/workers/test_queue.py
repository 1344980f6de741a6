"""The queue in the database: claims, leases, notifications, release and recovery.

Every rule is tried against the real PostgreSQL: through the worker's functions,
through raw SQL (the lease CHECKs), and concurrently (claims racing).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import credits, errors
from database.models import Job, JobStatus
from workers import queue
from workers.queue import LeaseLost

from factories import (
    make_dataset,
    make_ingestion_job,
    make_job,
    make_job_node,
    make_model,
    make_user,
    make_version,
    scalar,
)

LEASE = 30.0


def charged_job(engine: Engine, sql: Any, user: uuid.UUID, cost: int = 5, **cols: Any) -> uuid.UUID:
    """A queued job charged ``cost`` credits, as the API makes it."""
    job = make_job(sql, user, status="queued", credit_cost=cost, **cols)
    with Session(engine) as session:
        credits.charge_job(session, job, user=user)
    return job


def funded_user(engine: Engine, sql: Any, amount: int = 100) -> uuid.UUID:
    user = make_user(sql)
    with Session(engine) as session:
        credits.adjust(session, user, amount, "test credits", "tests")
    return user


def balance(sql: Any, user: uuid.UUID) -> int:
    return int(scalar(sql, "SELECT credit_balance FROM users WHERE id = :id", id=user))


def expire(sql: Any, table: str, row_id: uuid.UUID) -> None:
    sql(
        f"UPDATE {table} SET lease_expires_at = now() - interval '1 second' WHERE id = :id",
        id=row_id,
    )


# --- claims ------------------------------------------------------------------------------
def test_claim_takes_priority_first_then_oldest(engine: Engine, sql: Any) -> None:
    user = make_user(sql)
    old_low = make_job(sql, user, status="queued", priority=0)
    high = make_job(sql, user, status="queued", priority=5)
    new_low = make_job(sql, user, status="queued", priority=0)
    make_job(sql, user, status="pending")  # not queued: never taken
    taken = [queue.claim(engine, "job", "w1", LEASE) for _ in range(4)]
    assert [c.id if c else None for c in taken] == [high, old_low, new_low, None]
    row = sql(
        "SELECT status, leased_by, attempts, started_at IS NOT NULL AS started,"
        " lease_expires_at > now() AS leased FROM jobs WHERE id = :id",
        id=high,
    )[0]
    assert (row.status, row.leased_by, row.attempts, row.started, row.leased) == (
        "running",
        "w1",
        1,
        True,
        True,
    )


def test_ingestion_claim_marks_the_version_processing(engine: Engine, sql: Any) -> None:
    user = make_user(sql)
    version = make_version(sql, make_dataset(sql, user))
    ingestion = make_ingestion_job(sql, version, status="pending")
    claim = queue.claim(engine, "ingestion", "w1", LEASE)
    assert claim is not None and claim.id == ingestion and claim.user_id == user
    assert scalar(sql, "SELECT status FROM dataset_versions WHERE id = :id", id=version) == (
        "processing"
    )
    assert queue.claim(engine, "ingestion", "w2", LEASE) is None


def test_racing_workers_never_take_the_same_job(engine: Engine, sql: Any) -> None:
    """Eight workers claim at once from 40 jobs: each job is taken exactly once."""
    user = make_user(sql)
    jobs = {make_job(sql, user, status="queued") for _ in range(40)}
    start = threading.Barrier(8)
    taken: dict[str, list[uuid.UUID]] = {}

    def work(name: str) -> None:
        mine: list[uuid.UUID] = []
        start.wait()
        while (c := queue.claim(engine, "job", name, LEASE)) is not None:
            mine.append(c.id)
        taken[name] = mine

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [j for mine in taken.values() for j in mine]
    assert sorted(everything) == sorted(jobs)  # all taken, none twice
    by_worker = dict(sql("SELECT id, leased_by FROM jobs WHERE status = 'running'"))
    assert all(by_worker[j] == name for name, mine in taken.items() for j in mine)
    assert scalar(sql, "SELECT max(attempts) FROM jobs") == 1


def test_one_job_two_workers_one_wins(engine: Engine, sql: Any) -> None:
    """The claim holds the row lock until commit: a second claim skips it."""
    user = make_user(sql)
    job = make_job(sql, user, status="queued")
    with engine.connect() as first:
        first.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job})
        assert queue.claim(engine, "job", "w2", LEASE) is None  # skipped, not waited for
        first.rollback()
    claim = queue.claim(engine, "job", "w2", LEASE)
    assert claim is not None and claim.id == job


# --- the lease rules in the database ------------------------------------------------------
@pytest.mark.parametrize(
    "assignments",
    [
        "leased_by = 'w', lease_expires_at = now()",  # a lease on a queued job
        "status = 'running', leased_by = 'w'",  # a holder without an end
        "status = 'running', lease_expires_at = now()",  # an end without a holder
        "attempts = -1",
    ],
)
def test_lease_rules_refuse_raw_sql(sql: Any, assignments: str) -> None:
    job = make_job(sql, make_user(sql), status="queued")
    with pytest.raises(errors.InvalidValue):
        sql(f"UPDATE jobs SET {assignments} WHERE id = :id", id=job)


def test_finished_job_keeps_no_lease_through_the_orm(engine: Engine, sql: Any) -> None:
    job_id = make_job(sql, make_user(sql), status="queued")
    claim = queue.claim(engine, "job", "w1", LEASE)
    assert claim is not None
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = JobStatus.COMPLETED  # lease still set: refused
        with pytest.raises(errors.InvalidValue):
            session.commit()


def test_ingestion_lease_only_while_processing(sql: Any) -> None:
    version = make_version(sql, make_dataset(sql, make_user(sql)))
    ingestion = make_ingestion_job(sql, version, status="completed")
    with pytest.raises(errors.InvalidValue):
        sql(
            "UPDATE ingestion_jobs SET leased_by = 'w', lease_expires_at = now() WHERE id = :id",
            id=ingestion,
        )


# --- notifications -------------------------------------------------------------------------
def _listener(db_url: Any) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db_url.render_as_string(False).replace("+psycopg", ""), autocommit=True)
    conn.execute(f"LISTEN {queue.CHANNEL}")
    return conn


def _received(conn: psycopg.Connection[Any]) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=0.5)]


def test_queued_work_notifies_at_commit_only(engine: Engine, sql: Any, db_url: Any) -> None:
    user = make_user(sql)
    listener = _listener(db_url)
    try:
        with engine.connect() as conn:
            snap = conn.execute(
                text(
                    "INSERT INTO workflow_snapshots(user_id, snapshot_data)"
                    " VALUES (:u, '{}') RETURNING id"
                ),
                {"u": user},
            ).scalar_one()
            make_job(conn, user, snap, status="queued")
            assert _received(listener) == []  # not before the commit
            conn.rollback()
        assert _received(listener) == []  # a rolled-back enqueue wakes nobody
        job = make_job(sql, user, status="pending")
        assert _received(listener) == []  # pending jobs are not the queue's
        sql("UPDATE jobs SET status = 'queued' WHERE id = :id", id=job)
        assert _received(listener) == ["jobs"]
        version = make_version(sql, make_dataset(sql, user))
        make_ingestion_job(sql, version, status="pending")
        assert _received(listener) == ["ingestion_jobs"]
        claim = queue.claim(engine, "job", "w1", LEASE)
        assert claim is not None
        _received(listener)
        queue.renew_all(engine, [claim], LEASE)  # heartbeats are silent
        assert _received(listener) == []
    finally:
        listener.close()


# --- heartbeat, cancellation checks, release -----------------------------------------------
def test_heartbeat_extends_and_reports_lost_leases(engine: Engine, sql: Any) -> None:
    user = make_user(sql)
    a = make_job(sql, user, status="queued")
    b = make_job(sql, user, status="queued")
    ca = queue.claim(engine, "job", "w1", 1.0)
    cb = queue.claim(engine, "job", "w1", 1.0)
    assert ca is not None and cb is not None
    sql("UPDATE jobs SET leased_by = 'someone else' WHERE id = :id", id=b)
    before = scalar(sql, "SELECT lease_expires_at FROM jobs WHERE id = :id", id=a)
    assert queue.renew_all(engine, [ca, cb], LEASE) == {b}
    assert scalar(sql, "SELECT lease_expires_at FROM jobs WHERE id = :id", id=a) > before
    with engine.begin() as conn, pytest.raises(LeaseLost):
        queue.check_job(conn, cb, LEASE)


def test_check_job_sees_a_cancel_request(engine: Engine, sql: Any) -> None:
    job = make_job(sql, make_user(sql), status="queued")
    claim = queue.claim(engine, "job", "w1", LEASE)
    assert claim is not None
    with engine.begin() as conn:
        assert queue.check_job(conn, claim, LEASE) is False
    sql("UPDATE jobs SET cancel_requested_at = now() WHERE id = :id", id=job)
    with engine.begin() as conn:
        assert queue.check_job(conn, claim, LEASE) is True


def test_release_requeues_without_counting_the_attempt(engine: Engine, sql: Any) -> None:
    user = make_user(sql)
    job = make_job(sql, user, status="queued")
    node = make_job_node(sql, job, user, "n1", status="success", output_data={"x": 1})
    make_model(sql, user, job, s3_path="/tmp/artifact")
    claim = queue.claim(engine, "job", "w1", LEASE)
    assert claim is not None
    with Session(engine) as session:
        assert queue.release(session, claim) == ["/tmp/artifact"]
    row = sql("SELECT status, attempts, leased_by FROM jobs WHERE id = :id", id=job)[0]
    assert tuple(row) == ("queued", 0, None)
    assert tuple(sql("SELECT status, output_data FROM job_nodes WHERE id = :id", id=node)[0]) == (
        "pending",
        None,
    )
    assert scalar(sql, "SELECT count(*) FROM models WHERE job_id = :id", id=job) == 0
    with Session(engine) as session, pytest.raises(LeaseLost):
        queue.release(session, claim)  # not ours any more


# --- finishing and refunds ----------------------------------------------------------------
def test_failed_job_is_refunded_once(engine: Engine, sql: Any) -> None:
    user = funded_user(engine, sql, 100)
    job = charged_job(engine, sql, user, cost=30)
    assert balance(sql, user) == 70
    claim = queue.claim(engine, "job", "w1", LEASE)
    assert claim is not None
    with Session(engine) as session:
        assert queue.finish_job(session, claim, "failed", error="node 'm' failed: boom") == 30
    assert balance(sql, user) == 100
    assert tuple(sql("SELECT status, error_message FROM jobs WHERE id = :id", id=job)[0]) == (
        "failed",
        "node 'm' failed: boom",
    )
    with Session(engine) as session, pytest.raises(LeaseLost):
        queue.finish_job(session, claim, "failed", error="again")
    with Session(engine) as session:  # a second refund returns the first
        credits.refund_job(session, job, "again", user=user)
    assert balance(sql, user) == 100
    refunds = "SELECT count(*) FROM credit_transactions WHERE job_id = :id AND type = 'refund'"
    assert scalar(sql, refunds, id=job) == 1


def test_completed_job_keeps_its_charge(engine: Engine, sql: Any) -> None:
    user = funded_user(engine, sql, 100)
    job = charged_job(engine, sql, user, cost=30)
    claim = queue.claim(engine, "job", "w1", LEASE)
    assert claim is not None
    with Session(engine) as session:
        assert queue.finish_job(session, claim, "completed", results={"models": []}) == 0
    assert balance(sql, user) == 70
    row = sql("SELECT status, results, leased_by FROM jobs WHERE id = :id", id=job)[0]
    assert tuple(row) == ("completed", {"models": []}, None)


# --- recovery -----------------------------------------------------------------------------
def test_expired_lease_is_requeued_then_failed_and_refunded(engine: Engine, sql: Any) -> None:
    user = funded_user(engine, sql, 50)
    job = charged_job(engine, sql, user, cost=20)
    node = make_job_node(sql, job, user, "m", status="running")
    for attempt in (1, 2):
        claim = queue.claim(engine, "job", f"dead{attempt}", LEASE)
        assert claim is not None and claim.attempts == attempt
        assert queue.recover_expired(engine, max_attempts=2).requeued == 0  # not expired yet
        expire(sql, "jobs", job)
        sql("UPDATE job_nodes SET status = 'running' WHERE id = :id", id=node)
        recovered = queue.recover_expired(engine, max_attempts=2)
        if attempt == 1:
            assert recovered.requeued == 1
            assert scalar(sql, "SELECT status FROM jobs WHERE id = :id", id=job) == "queued"
            assert scalar(sql, "SELECT status FROM job_nodes WHERE id = :id", id=node) == "pending"
            assert balance(sql, user) == 30  # still charged: it will run again
            with engine.begin() as conn, pytest.raises(LeaseLost):
                queue.check_job(conn, claim, LEASE)  # the dead worker, back, finds it gone
    assert (recovered.failed, recovered.refunded_credits) == (1, 20)
    row = sql("SELECT status, error_message, leased_by FROM jobs WHERE id = :id", id=job)[0]
    assert row.status == "failed" and "2 times" in row.error_message and row.leased_by is None
    assert scalar(sql, "SELECT status FROM job_nodes WHERE id = :id", id=node) == "failed"
    assert balance(sql, user) == 50
    assert queue.recover_expired(engine, max_attempts=2).refunded_credits == 0  # once


def test_expired_lease_of_a_cancelled_job_cancels_and_refunds(engine: Engine, sql: Any) -> None:
    user = funded_user(engine, sql, 50)
    job = charged_job(engine, sql, user, cost=20)
    assert queue.claim(engine, "job", "dead", LEASE) is not None
    sql("UPDATE jobs SET cancel_requested_at = now() WHERE id = :id", id=job)
    expire(sql, "jobs", job)
    recovered = queue.recover_expired(engine, max_attempts=3)
    assert (recovered.cancelled, recovered.refunded_credits) == (1, 20)
    assert scalar(sql, "SELECT status FROM jobs WHERE id = :id", id=job) == "cancelled"
    assert balance(sql, user) == 50


def test_recovery_drops_models_of_the_dead_attempt(engine: Engine, sql: Any) -> None:
    user = make_user(sql)
    job = make_job(sql, user, status="queued")
    assert queue.claim(engine, "job", "dead", LEASE) is not None
    make_model(sql, user, job, s3_path="/somewhere/model.joblib")
    expire(sql, "jobs", job)
    removed: list[str] = []
    queue.recover_expired(engine, max_attempts=3, remove_file=removed.append)
    assert removed == ["/somewhere/model.joblib"]
    assert scalar(sql, "SELECT model_count FROM users WHERE id = :id", id=user) == 0


def test_expired_ingestion_waits_again_then_fails(engine: Engine, sql: Any) -> None:
    user = make_user(sql)
    version = make_version(sql, make_dataset(sql, user))
    ingestion = make_ingestion_job(sql, version, status="pending")
    for attempt in (1, 2):
        assert queue.claim(engine, "ingestion", "dead", LEASE) is not None
        expire(sql, "ingestion_jobs", ingestion)
        queue.recover_expired(engine, max_attempts=2)
        expected = "pending" if attempt == 1 else "failed"
        assert scalar(sql, "SELECT status FROM ingestion_jobs WHERE id = :id", id=ingestion) == (
            expected
        )
        assert scalar(sql, "SELECT status FROM dataset_versions WHERE id = :id", id=version) == (
            expected
        )
    assert "given up" in scalar(
        sql, "SELECT error_message FROM dataset_versions WHERE id = :id", id=version
    )


def test_concurrent_recoveries_refund_once(engine: Engine, sql: Any) -> None:
    """Four workers recover the same expired jobs at once: one refund each job."""
    user = funded_user(engine, sql, 100)
    jobs = [charged_job(engine, sql, user, cost=5) for _ in range(6)]
    for _ in jobs:
        assert queue.claim(engine, "job", "dead", LEASE) is not None
    sql("UPDATE jobs SET lease_expires_at = now() - interval '1 second', attempts = 3")
    start = threading.Barrier(4)
    results: list[queue.Recovered] = []

    def recover() -> None:
        start.wait()
        results.append(queue.recover_expired(engine, max_attempts=3))

    threads = [threading.Thread(target=recover) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.failed for r in results) == 6
    assert sum(r.refunded_credits for r in results) == 30
    assert balance(sql, user) == 100
    refunds = scalar(sql, "SELECT count(*) FROM credit_transactions WHERE type = 'refund'")
    assert refunds == 6


def test_cancel_through_the_api_path_and_recovery_do_not_deadlock(engine: Engine, sql: Any) -> None:
    """The API locks user then job; recovery does too. Racing both many times ends
    with every job ended once and no deadlock error."""
    user = funded_user(engine, sql, 1000)
    jobs = [charged_job(engine, sql, user, cost=1) for _ in range(20)]
    for _ in jobs:
        assert queue.claim(engine, "job", "dead", LEASE) is not None
    sql("UPDATE jobs SET lease_expires_at = now() - interval '1 second'")
    failures: list[BaseException] = []

    def cancel_all() -> None:
        for job in jobs:
            try:
                with Session(engine) as session, session.begin():
                    credits.lock_users(session, [user])
                    session.execute(
                        text(
                            "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at,"
                            " now()) WHERE id = :id AND status = 'running'"
                        ),
                        {"id": job},
                    )
            except BaseException as exc:  # pragma: no cover - the failure we look for
                failures.append(exc)

    def recover() -> None:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                queue.recover_expired(engine, max_attempts=5)
                if not scalar(sql, "SELECT count(*) FROM jobs WHERE status = 'running'"):
                    return
        except BaseException as exc:  # pragma: no cover
            failures.append(exc)

    threads = [threading.Thread(target=cancel_all), threading.Thread(target=recover)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    states = dict(sql("SELECT status, count(*) FROM jobs GROUP BY status"))
    assert states.get("running", 0) == 0
    refunded = scalar(sql, "SELECT count(*) FROM credit_transactions WHERE type = 'refund'")
    assert refunded == states.get("cancelled", 0)


# --- the completion: one statement, the same rules ------------------------------------------
def _hold_user_row(engine: Engine, user: uuid.UUID) -> Any:
    """An open transaction holding the user's row lock (the API's: FOR NO KEY UPDATE)."""
    conn = engine.connect()
    conn.execute(text("SELECT 1 FROM users WHERE id = :u FOR NO KEY UPDATE"), {"u": user})
    return conn


def _wait_until_blocked(sql: Any, on: str) -> None:
    """Until some backend waits for a lock with ``on`` in its query (no timing asserted:
    it waits as long as it takes, up to a generous bound)."""
    for _ in range(1000):
        waiting = scalar(
            sql,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE :q",
            q=f"%{on}%",
        )
        if waiting:
            return
        time.sleep(0.01)
    raise AssertionError("the completion never waited for the user's lock")


def test_completion_checks_the_lease(engine: Engine, sql: Any) -> None:
    user = funded_user(engine, sql, 100)
    job = charged_job(engine, sql, user, cost=10)
    claim = queue.claim(engine, "job", "w1", LEASE)
    assert claim is not None
    other = queue.Claim(claim.queue, claim.kind, claim.id, claim.user_id, claim.attempts, "w2")
    with Session(engine) as session, pytest.raises(LeaseLost):
        queue.finish_job(session, other, "completed")  # not this worker's lease
    assert scalar(sql, "SELECT status::text FROM jobs WHERE id = :id", id=job) == "running"
    expire(sql, "jobs", job)
    queue.recover_expired(engine, max_attempts=3)  # taken back: queued again
    with Session(engine) as session, pytest.raises(LeaseLost):
        queue.finish_job(session, claim, "completed", results={"models": []})
    again = queue.claim(engine, "job", "w3", LEASE)
    assert again is not None and again.id == job
    with Session(engine) as session, pytest.raises(LeaseLost):
        queue.finish_job(session, claim, "completed")  # w1's lease, now w3's job
    with Session(engine) as session:
        assert queue.finish_job(session, again, "completed") == 0
    with Session(engine) as session, pytest.raises(LeaseLost):
        queue.finish_job(session, again, "completed")  # once
    row = sql("SELECT status::text, results, leased_by FROM jobs WHERE id = :id", id=job)[0]
    assert tuple(row) == ("completed", None, None)
    assert balance(sql, user) == 90  # a completion keeps the charge
    lines = sql("SELECT message FROM job_logs WHERE job_id = :id ORDER BY seq", id=job)
    assert lines[-1][0] == "job completed"


def test_completion_locks_the_user_before_the_job(engine: Engine, sql: Any) -> None:
    """While the completion waits for the user's row (held by, say, the API's cancel),
    it holds no lock on the job: the holder can go on to lock the job (the API's order,
    user then job) without a deadlock, and the completion then sees its outcome."""
    user = funded_user(engine, sql, 100)
    job = charged_job(engine, sql, user, cost=10)
    claim = queue.claim(engine, "job", "w1", LEASE)
    assert claim is not None
    holder = _hold_user_row(engine, user)
    outcome: list[object] = []

    def complete() -> None:
        try:
            with Session(engine) as session:
                outcome.append(queue.finish_job(session, claim, "completed"))
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcome.append(exc)

    thread = threading.Thread(target=complete)
    thread.start()
    try:
        _wait_until_blocked(sql, "UPDATE jobs")
        # The job's row is free: the holder locks it at once, as a cancel would.
        holder.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE NOWAIT"), {"id": job})
        holder.execute(
            text("UPDATE jobs SET cancel_requested_at = now() WHERE id = :id"), {"id": job}
        )
        holder.commit()
    finally:
        holder.close()
        thread.join()
    assert outcome == [0]
    row = sql(
        "SELECT status::text, cancel_requested_at IS NOT NULL FROM jobs WHERE id = :id", id=job
    )
    assert tuple(row[0]) == ("completed", True)


def test_completion_waits_for_the_user_at_most_lock_timeout(
    engine: Engine, sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The completion sets DB_LOCK_TIMEOUT_MS itself (this test engine's connections
    have no lock_timeout: without it the wait would last until the holder ends)."""
    from database import config

    user = funded_user(engine, sql, 100)
    job = charged_job(engine, sql, user, cost=10)
    claim = queue.claim(engine, "job", "w1", LEASE)
    assert claim is not None
    monkeypatch.setenv("DB_LOCK_TIMEOUT_MS", "50")
    config.get_settings.cache_clear()
    holder = _hold_user_row(engine, user)
    release = threading.Timer(30.0, holder.rollback)  # a broken timeout ends, and fails
    release.start()
    try:
        with Session(engine) as session, pytest.raises(errors.LockTimeout):
            queue.finish_job(session, claim, "completed")
    finally:
        release.cancel()
        holder.rollback()
        holder.close()
        config.get_settings.cache_clear()
    assert scalar(sql, "SELECT status::text FROM jobs WHERE id = :id", id=job) == "running"
    with Session(engine) as session:
        assert queue.finish_job(session, claim, "completed") == 0
