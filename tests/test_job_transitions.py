"""The life of queued work, kept by the database (sql/triggers/jobs.sql, ML010).

Every pair of statuses of jobs, job_nodes and ingestion_jobs is tried through raw
SQL: the allowed ones pass, every other one is refused with
``InvalidStatusTransition``; then through the ORM, and through the API's mapping.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from database import errors
from database.models import (
    IngestionJob,
    IngestionStatus,
    Job,
    JobNode,
    JobStatus,
    NodeStatus,
)

from factories import (
    make_dataset,
    make_ingestion_job,
    make_job,
    make_job_node,
    make_user,
    make_version,
    scalar,
)

JOB_ALLOWED = {
    ("pending", "queued"),
    ("pending", "cancelled"),
    ("queued", "running"),
    ("queued", "cancelled"),
    ("running", "completed"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "queued"),
}
NODE_ALLOWED = {
    ("pending", "running"),
    ("pending", "skipped"),
    ("running", "success"),
    ("running", "failed"),
}
INGESTION_ALLOWED = {
    ("pending", "processing"),
    ("processing", "completed"),
    ("processing", "failed"),
    ("processing", "pending"),
}


def _pairs(values: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in itertools.product(values, values) if a != b]


JOB_PAIRS = _pairs([s.value for s in JobStatus])
NODE_PAIRS = _pairs([s.value for s in NodeStatus])
INGESTION_PAIRS = _pairs([s.value for s in IngestionStatus])


# --- jobs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("old", "new"), JOB_PAIRS)
def test_job_transition_raw_sql(sql: Any, old: str, new: str) -> None:
    user = make_user(sql)
    job = make_job(sql, user, status=old)
    change = "UPDATE jobs SET status = CAST(:s AS job_status) WHERE id = :id"
    if (old, new) in JOB_ALLOWED:
        sql(change, s=new, id=job)
        assert scalar(sql, "SELECT status FROM jobs WHERE id = :id", id=job) == new
        return
    with pytest.raises(errors.InvalidStatusTransition) as refused:
        sql(change, s=new, id=job)
    assert refused.value.sqlstate == "ML010"
    assert (refused.value.table, refused.value.from_status, refused.value.to_status) == (
        "jobs",
        old,
        new,
    )
    assert scalar(sql, "SELECT status FROM jobs WHERE id = :id", id=job) == old


def test_a_status_left_as_it_is_is_no_transition(sql: Any) -> None:
    user = make_user(sql)
    job = make_job(sql, user, status="completed")
    sql("UPDATE jobs SET status = 'completed', priority = 3 WHERE id = :id", id=job)
    assert scalar(sql, "SELECT priority FROM jobs WHERE id = :id", id=job) == 3


def test_job_transition_through_the_orm(session: Session, sql: Any) -> None:
    user = make_user(sql)
    job_id = make_job(sql, user, status="failed")
    job = session.get(Job, job_id)
    assert job is not None
    job.status = JobStatus.RUNNING
    with pytest.raises(errors.InvalidStatusTransition, match="from failed to running"):
        session.flush()
    session.rollback()
    job = session.get(Job, job_id)
    assert job is not None and job.status == JobStatus.FAILED
    queued = session.get(Job, make_job(sql, user, status="queued"))
    assert queued is not None
    queued.status = JobStatus.RUNNING
    session.flush()
    queued.status = JobStatus.COMPLETED
    session.commit()
    assert scalar(sql, "SELECT status FROM jobs WHERE id = :id", id=queued.id) == "completed"


# --- job_nodes ------------------------------------------------------------------------------
@pytest.mark.parametrize("job_status", ["running", "queued"])
@pytest.mark.parametrize(("old", "new"), NODE_PAIRS)
def test_node_transition_raw_sql(sql: Any, old: str, new: str, job_status: str) -> None:
    user = make_user(sql)
    job = make_job(sql, user, status=job_status)
    node = make_job_node(sql, job, user, status=old)
    change = "UPDATE job_nodes SET status = CAST(:s AS node_status) WHERE id = :id"
    # Back to pending only while the job is queued again (its nodes' reset).
    allowed = (old, new) in NODE_ALLOWED or (new == "pending" and job_status == "queued")
    if allowed:
        sql(change, s=new, id=node)
        assert scalar(sql, "SELECT status FROM job_nodes WHERE id = :id", id=node) == new
        return
    with pytest.raises(errors.InvalidStatusTransition) as refused:
        sql(change, s=new, id=node)
    assert refused.value.table == "job_nodes"
    assert scalar(sql, "SELECT status FROM job_nodes WHERE id = :id", id=node) == old


def test_node_transition_through_the_orm(session: Session, sql: Any) -> None:
    user = make_user(sql)
    job = make_job(sql, user, status="running")
    node = session.get(JobNode, make_job_node(sql, job, user, status="success"))
    assert node is not None
    node.status = NodeStatus.RUNNING
    with pytest.raises(errors.InvalidStatusTransition):
        session.flush()


# --- ingestion_jobs ------------------------------------------------------------------------
@pytest.mark.parametrize(("old", "new"), INGESTION_PAIRS)
def test_ingestion_transition_raw_sql(sql: Any, old: str, new: str) -> None:
    user = make_user(sql)
    ingestion = make_ingestion_job(sql, make_version(sql, make_dataset(sql, user)), status=old)
    change = "UPDATE ingestion_jobs SET status = CAST(:s AS ingestion_status) WHERE id = :id"
    if (old, new) in INGESTION_ALLOWED:
        sql(change, s=new, id=ingestion)
        assert scalar(sql, "SELECT status FROM ingestion_jobs WHERE id = :id", id=ingestion) == (
            new
        )
        return
    with pytest.raises(errors.InvalidStatusTransition) as refused:
        sql(change, s=new, id=ingestion)
    assert refused.value.table == "ingestion_jobs"


def test_ingestion_transition_through_the_orm(session: Session, sql: Any) -> None:
    user = make_user(sql)
    version = make_version(sql, make_dataset(sql, user))
    ingestion_id = make_ingestion_job(sql, version, status="completed")
    ingestion = session.scalars(select(IngestionJob).where(IngestionJob.id == ingestion_id)).one()
    ingestion.status = IngestionStatus.PENDING
    with pytest.raises(errors.InvalidStatusTransition, match="from completed to pending"):
        session.flush()


# --- the API's answer ------------------------------------------------------------------------
def test_the_api_maps_a_refused_transition_to_409(sql: Any) -> None:
    from api.errors import from_database

    user = make_user(sql)
    job = make_job(sql, user, status="cancelled")
    with pytest.raises(errors.InvalidStatusTransition) as refused:
        sql("UPDATE jobs SET status = 'queued' WHERE id = :id", id=job)
    answer = from_database(refused.value)
    assert (answer.status, answer.code) == (409, "invalid_status_transition")
    assert answer.details == {"from": "cancelled", "to": "queued"}
    assert str(uuid.UUID(str(job))) in answer.message


# --- as the apps' least-privilege role --------------------------------------------------------


def test_the_app_role_numbers_versions_and_is_held_to_the_transitions(
    sql: Any, app_engine: Engine
) -> None:
    """The apps' role runs the numbering (it updates the dataset's counter) and the
    transition rules hold for it as for anyone; it cannot lower the counter."""
    user = make_user(sql)
    dataset = make_dataset(sql, user)
    make_version(sql, dataset)
    sql("DELETE FROM dataset_versions WHERE dataset_id = :d", d=dataset)
    with app_engine.begin() as conn:
        number = conn.execute(
            text(
                "INSERT INTO dataset_versions (dataset_id, user_id, original_format)"
                " VALUES (:d, :u, 'csv') RETURNING version_number"
            ),
            {"d": dataset, "u": user},
        ).scalar_one()
    assert number == 2
    with pytest.raises(errors.VersionCounterDecrease), app_engine.begin() as conn:
        conn.execute(
            text("UPDATE datasets SET last_version_number = 0 WHERE id = :d"), {"d": dataset}
        )
    job = make_job(sql, user, status="completed")
    with pytest.raises(errors.InvalidStatusTransition), app_engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'running' WHERE id = :j"), {"j": job})
    queued = make_job(sql, user, status="queued")
    with app_engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'running' WHERE id = :j"), {"j": queued})
    assert scalar(sql, "SELECT status::text FROM jobs WHERE id = :j", j=queued) == "running"
