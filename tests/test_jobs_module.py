"""database.jobs: enqueue a run all or nothing, the owner's cancel, kinds, and that the
claim hands out the kind the worker dispatches on."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from database import credits, errors, jobs
from database.models import JobKind, JobStatus, NodeType

from factories import make_job, make_job_node, make_user, scalar


def funded_user(engine: Engine, sql: Any, amount: int) -> uuid.UUID:
    user = make_user(sql)
    with Session(engine) as session:
        credits.adjust(session, user, amount, "test credits", "tests")
    return user


def enqueue(engine: Engine, user: uuid.UUID, cost: int) -> uuid.UUID:
    with Session(engine) as session:
        job = jobs.enqueue_run(
            session,
            user_id=user,
            workflow_id=None,
            snapshot_data={"definition": {"nodes": []}},
            nodes=[("data", NodeType.DATASET), ("train", NodeType.MODEL)],
            credit_cost=cost,
            description="a test run",
        )
        return job.id


def test_enqueue_run_writes_everything_or_nothing(engine: Engine, sql: Any) -> None:
    user = funded_user(engine, sql, 10)
    job = enqueue(engine, user, 7)
    row = sql("SELECT status::text, kind::text, credit_cost FROM jobs WHERE id = :id", id=job)[0]
    assert tuple(row) == ("queued", "workflow_run", 7)
    assert scalar(sql, "SELECT count(*) FROM job_nodes WHERE job_id = :id", id=job) == 2
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user) == 3
    with pytest.raises(errors.InsufficientCredits):
        enqueue(engine, user, 5)
    for table in ("jobs", "workflow_snapshots"):
        assert scalar(sql, f"SELECT count(*) FROM {table} WHERE user_id = :u", u=user) == 1
    assert scalar(sql, "SELECT count(*) FROM job_nodes WHERE user_id = :u", u=user) == 2
    with Session(engine) as session, pytest.raises(ValueError, match="enqueue_ingestion"):
        jobs.enqueue_run(
            session,
            user_id=user,
            workflow_id=None,
            snapshot_data={},
            nodes=[],
            credit_cost=0,
            kind=JobKind.INGESTION,
        )


def test_a_job_of_kind_ingestion_is_refused(sql: Any) -> None:
    with pytest.raises(errors.InvalidValue):
        make_job(sql, make_user(sql), kind="ingestion")


def test_claim_says_the_kind(engine: Engine, sql: Any) -> None:
    user = funded_user(engine, sql, 10)
    job = enqueue(engine, user, 1)
    claim = jobs.claim(engine, "job", "w1", 30)
    assert claim is not None and (claim.id, claim.queue, claim.kind) == (
        job,
        "job",
        JobKind.WORKFLOW_RUN,
    )


def test_cancel_of_a_queued_job_skips_its_nodes_and_refunds(engine: Engine, sql: Any) -> None:
    user = funded_user(engine, sql, 10)
    job = enqueue(engine, user, 4)
    with Session(engine) as session:
        outcome = jobs.cancel_job(session, user, job)
        assert outcome.job.status == JobStatus.CANCELLED
        session.commit()
    assert outcome.refunded_credits == 4
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user) == 10
    statuses = sql("SELECT DISTINCT status::text FROM job_nodes WHERE job_id = :id", id=job)
    assert [r[0] for r in statuses] == ["skipped"]
    with Session(engine) as session, pytest.raises(errors.JobAlreadyFinished) as finished:
        jobs.cancel_job(session, user, job)
    assert finished.value.status == "cancelled"
    with Session(engine) as session, pytest.raises(errors.JobNotFound):
        jobs.cancel_job(session, make_user(sql), job)  # another user's job


def test_cancel_of_a_running_job_asks_its_worker(engine: Engine, sql: Any) -> None:
    user = make_user(sql)
    job = make_job(sql, user, status="running")
    make_job_node(sql, job, user, status="running")
    with Session(engine) as session:
        asked = jobs.cancel_job(session, user, job).job.cancel_requested_at
        session.commit()
    with Session(engine) as session:
        again = jobs.cancel_job(session, user, job).job.cancel_requested_at
        session.commit()
    assert asked is not None and again == asked
    assert scalar(sql, "SELECT status::text FROM jobs WHERE id = :id", id=job) == "running"


def test_cancel_racing_the_claim_ends_in_one_allowed_state(engine: Engine, sql: Any) -> None:
    """The owner cancels while workers claim: each job is either cancelled (never
    claimed) or running with a cancel asked; never both, never refused."""
    user = funded_user(engine, sql, 100)
    ids = [enqueue(engine, user, 1) for _ in range(12)]
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def cancel_all() -> None:
        start.wait()
        for job in ids:
            try:
                with Session(engine) as session:
                    jobs.cancel_job(session, user, job)
                    session.commit()
            except BaseException as exc:  # pragma: no cover - the failure we look for
                failures.append(exc)

    def claim_all() -> None:
        start.wait()
        while jobs.claim(engine, "job", "w", 30) is not None:
            pass

    threads = [threading.Thread(target=cancel_all), threading.Thread(target=claim_all)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    rows = sql("SELECT status::text, cancel_requested_at FROM jobs WHERE id = ANY(:ids)", ids=ids)
    assert {r.status for r in rows} <= {"cancelled", "running"}
    assert all(r.cancel_requested_at is not None for r in rows)
    refunded = scalar(sql, "SELECT count(*) FROM credit_transactions WHERE type = 'refund'")
    assert refunded == sum(r.status == "cancelled" for r in rows)
