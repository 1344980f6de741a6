"""job_logs and job_nodes.progress: the rules the database keeps, for any client.

- A job's lines are numbered 1, 2, 3... by the database, at most 1000 per job
  (the 1000th says the log is full, later lines are dropped), also under
  concurrent writers, and removed with the job.
- Status changes of a job and of its nodes write their own lines; a node's
  progress follows its status.
- progress is 0..1 (NaN refused), through raw SQL and the ORM.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from database import errors
from database.grants import grant
from database.joblog import ProgressReporter, log_line, set_progress
from database.models import JobLog, JobNode, LogLevel, NodeType
from database.models.job_log import MAX_LOG_LINES, MAX_LOG_MESSAGE

from factories import make_job, make_job_node, make_user, run, scalar


def lines(sql: Any, job_id: uuid.UUID) -> list[Any]:
    return run(
        sql,
        "SELECT seq, level::text AS level, node_id, message FROM job_logs"
        " WHERE job_id = :j ORDER BY seq",
        j=job_id,
    )


@pytest.fixture
def job(sql: Any) -> tuple[uuid.UUID, uuid.UUID]:
    user_id = make_user(sql)
    return make_job(sql, user_id, status="queued"), user_id


# --- numbering and the bound ----------------------------------------------------------------
def test_lines_are_numbered_per_job_whatever_the_client_sends(sql: Any, job: Any) -> None:
    job_id, user_id = job
    other = make_job(sql, user_id)
    for target in (job_id, other, job_id):
        sql("INSERT INTO job_logs (job_id, seq, message) VALUES (:j, 777, 'hello')", j=target)
    assert [r.seq for r in lines(sql, job_id)] == [1, 2]
    assert [(r.seq, r.level) for r in lines(sql, other)] == [(1, "info")]


def test_a_job_keeps_at_most_1000_lines(sql: Any, engine: Engine, job: Any) -> None:
    job_id, _ = job
    assert MAX_LOG_LINES == 1000
    sql(
        "INSERT INTO job_logs (job_id, message) SELECT :j, 'line ' || i"
        " FROM generate_series(1, 1005) AS i",
        j=job_id,
    )
    kept = lines(sql, job_id)
    assert len(kept) == 1000 and [r.seq for r in kept] == list(range(1, 1001))
    assert kept[998].message == "line 999"
    assert kept[-1].level == "warning" and "full" in kept[-1].message
    # Later lines: dropped, not refused (a chatty writer never fails a job).
    assert (
        sql("INSERT INTO job_logs (job_id, message) VALUES (:j, 'more') RETURNING seq", j=job_id)
        == []
    )
    with engine.begin() as conn:
        assert log_line(conn, job_id, LogLevel.ERROR, "still more") is None
    assert scalar(sql, "SELECT count(*) FROM job_logs WHERE job_id = :j", j=job_id) == 1000


def test_seq_and_message_checks_refuse_raw_sql_and_the_orm(
    sql: Any, session: Session, job: Any
) -> None:
    job_id, _ = job
    sql("INSERT INTO job_logs (job_id, message) VALUES (:j, 'one')", j=job_id)
    with pytest.raises(errors.InvalidValue, match="ck_job_logs_seq_range"):
        sql("UPDATE job_logs SET seq = 1001 WHERE job_id = :j", j=job_id)
    with pytest.raises(errors.InvalidValue, match="ck_job_logs_message_length"):
        sql("INSERT INTO job_logs (job_id, message) VALUES (:j, '')", j=job_id)
    with pytest.raises(errors.InvalidValue, match="ck_job_logs_message_length"):
        sql("INSERT INTO job_logs (job_id, message) VALUES (:j, repeat('x', 2001))", j=job_id)
    with pytest.raises(errors.InvalidValue, match="ck_job_logs_message_length"):
        session.add(JobLog(job_id=job_id, message=""))
        session.flush()
    session.rollback()
    entry = JobLog(job_id=job_id, level=LogLevel.WARNING, node_id="train", message="from the ORM")
    session.add(entry)
    session.commit()
    assert entry.seq == 2 and entry.created_at is not None


def test_log_line_cuts_a_long_message_and_skips_an_empty_one(
    engine: Engine, sql: Any, job: Any
) -> None:
    job_id, _ = job
    with engine.begin() as conn:
        assert log_line(conn, job_id, "info", "x" * 5000, node_id="data") == 1
        assert log_line(conn, job_id, "info", "  ") is None
    (row,) = lines(sql, job_id)
    assert len(row.message) == MAX_LOG_MESSAGE and row.node_id == "data"


def test_concurrent_writers_keep_the_numbering_and_the_bound(
    engine: Engine, sql: Any, job: Any
) -> None:
    job_id, _ = job
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def write(name: str) -> None:
        try:
            barrier.wait()
            for i in range(600):
                with engine.begin() as conn:
                    log_line(conn, job_id, "info", f"{name} {i}")
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    kept = lines(sql, job_id)
    assert [r.seq for r in kept] == list(range(1, 1001))
    assert {r.message.split()[0] for r in kept[:-1]} == {"a", "b"}


def test_lines_go_with_their_job(sql: Any, job: Any) -> None:
    job_id, _ = job
    sql("INSERT INTO job_logs (job_id, message) VALUES (:j, 'bye')", j=job_id)
    sql("DELETE FROM jobs WHERE id = :j", j=job_id)
    assert scalar(sql, "SELECT count(*) FROM job_logs WHERE job_id = :j", j=job_id) == 0


# --- lines written by the status triggers -------------------------------------------------------
def test_job_status_changes_are_logged(sql: Any, job: Any) -> None:
    job_id, _ = job
    sql("UPDATE jobs SET status = 'running', attempts = 1 WHERE id = :j", j=job_id)
    sql("UPDATE jobs SET priority = 5 WHERE id = :j", j=job_id)  # not a status change
    sql("UPDATE jobs SET status = 'queued' WHERE id = :j", j=job_id)
    sql("UPDATE jobs SET status = 'running', attempts = 2 WHERE id = :j", j=job_id)
    sql(
        "UPDATE jobs SET status = 'failed', error_message = 'node ''train'' failed: boom'"
        " WHERE id = :j",
        j=job_id,
    )
    assert [(r.level, r.message) for r in lines(sql, job_id)] == [
        ("info", "job claimed by a worker (attempt 1)"),
        (
            "warning",
            "attempt 1 ended without finishing (its worker stopped or was lost):"
            " the job waits in the queue again",
        ),
        ("info", "job claimed by a worker (attempt 2)"),
        ("error", "job failed: node 'train' failed: boom"),
    ]


def test_a_cancel_is_logged(sql: Any, job: Any) -> None:
    job_id, _ = job
    sql(
        "UPDATE jobs SET status = 'cancelled', error_message = 'cancelled by its owner'"
        " WHERE id = :j",
        j=job_id,
    )
    assert [(r.level, r.message) for r in lines(sql, job_id)] == [
        ("warning", "job cancelled: cancelled by its owner")
    ]


def test_node_status_changes_are_logged_and_move_progress(sql: Any, job: Any) -> None:
    job_id, user_id = job
    make_job_node(sql, job_id, user_id, "train", node_type="model")
    make_job_node(sql, job_id, user_id, "keep", node_type="save")

    def node(name: str) -> Any:
        return run(
            sql,
            "SELECT progress, progress_message FROM job_nodes WHERE job_id = :j AND node_id = :n",
            j=job_id,
            n=name,
        )[0]

    sql("UPDATE job_nodes SET status = 'running' WHERE job_id = :j AND node_id = 'train'", j=job_id)
    sql(
        "UPDATE job_nodes SET progress = 0.5, progress_message = 'fitting'"
        " WHERE job_id = :j AND node_id = 'train'",
        j=job_id,
    )
    assert tuple(node("train")) == (0.5, "fitting")
    sql(
        "UPDATE job_nodes SET status = 'failed', error_message = 'boom'"
        " WHERE job_id = :j AND node_id = 'train'",
        j=job_id,
    )
    assert tuple(node("train")) == (0.5, None)  # how far it got
    sql(
        "UPDATE job_nodes SET status = 'skipped',"
        " error_message = 'skipped: input node ''train'' failed'"
        " WHERE job_id = :j AND node_id = 'keep'",
        j=job_id,
    )
    sql("UPDATE job_nodes SET status = 'pending' WHERE job_id = :j", j=job_id)  # a reset
    assert tuple(node("train")) == (0, None)
    sql("UPDATE job_nodes SET status = 'running' WHERE job_id = :j AND node_id = 'train'", j=job_id)
    sql("UPDATE job_nodes SET status = 'success' WHERE job_id = :j AND node_id = 'train'", j=job_id)
    assert tuple(node("train")) == (1, None)
    assert [(r.level, r.node_id, r.message) for r in lines(sql, job_id)] == [
        ("info", "train", "node train (model) started"),
        ("error", "train", "node train failed: boom"),
        ("warning", "keep", "node keep skipped: input node 'train' failed"),
        ("info", "train", "node train (model) started"),
        ("info", "train", "node train succeeded"),
    ]


def test_the_apps_role_writes_lines_through_the_triggers(
    sql: Any, engine: Engine, db_url: Any, job: Any
) -> None:
    job_id, user_id = job
    make_job_node(sql, job_id, user_id, "data", node_type="dataset")
    role = f"app_{uuid.uuid4().hex[:10]}"
    sql(f'CREATE ROLE "{role}" LOGIN')
    with engine.begin() as conn:
        grant(conn, role)
    app = errors.install(create_engine(db_url.set(username=role), pool_size=1))
    try:
        with app.begin() as conn:
            conn.execute(text("UPDATE jobs SET status = 'running' WHERE id = :j"), {"j": job_id})
            conn.execute(
                text("UPDATE job_nodes SET status = 'running' WHERE job_id = :j"), {"j": job_id}
            )
            assert set_progress(conn, job_id, "data", 0.25, "reading")
            assert log_line(conn, job_id, "info", "as the app") == 3
    finally:
        app.dispose()
        sql(f'DROP OWNED BY "{role}"')
        sql(f'DROP ROLE "{role}"')
    assert [r.seq for r in lines(sql, job_id)] == [1, 2, 3]


# --- progress ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1.5", "-0.1", "'NaN'", "'Infinity'"])
def test_progress_is_between_0_and_1_in_raw_sql(sql: Any, job: Any, value: str) -> None:
    job_id, user_id = job
    make_job_node(sql, job_id, user_id, "n")
    with pytest.raises(errors.InvalidValue, match="ck_job_nodes_progress_range"):
        sql(f"UPDATE job_nodes SET progress = {value} WHERE job_id = :j", j=job_id)


@pytest.mark.parametrize("value", [1.0001, -0.5, float("nan")])
def test_progress_is_between_0_and_1_in_the_orm(
    session: Session, sql: Any, job: Any, value: float
) -> None:
    job_id, user_id = job
    session.add(
        JobNode(
            job_id=job_id, user_id=user_id, node_id="n", node_type=NodeType.MODEL, progress=value
        )
    )
    with pytest.raises(errors.InvalidValue, match="ck_job_nodes_progress_range"):
        session.flush()
    session.rollback()
    node = JobNode(job_id=job_id, user_id=user_id, node_id="m", node_type=NodeType.MODEL)
    session.add(node)
    session.commit()
    assert node.progress == 0 and node.progress_message is None


def test_progress_message_length_is_checked(sql: Any, job: Any) -> None:
    job_id, user_id = job
    make_job_node(sql, job_id, user_id, "n")
    with pytest.raises(errors.InvalidValue, match="ck_job_nodes_progress_message_length"):
        sql("UPDATE job_nodes SET progress_message = repeat('x', 501) WHERE job_id = :j", j=job_id)


def test_set_progress_writes_only_a_running_node_of_the_lease_holder(
    engine: Engine, sql: Any, job: Any
) -> None:
    job_id, user_id = job
    make_job_node(sql, job_id, user_id, "n")
    with engine.begin() as conn:
        assert not set_progress(conn, job_id, "n", 0.5)  # pending
    sql(
        "UPDATE jobs SET status = 'running', leased_by = 'w1',"
        " lease_expires_at = now() + interval '1 minute' WHERE id = :j",
        j=job_id,
    )
    sql("UPDATE job_nodes SET status = 'running' WHERE job_id = :j", j=job_id)
    with engine.begin() as conn:
        assert not set_progress(conn, job_id, "n", 0.5, worker="w2")
        assert set_progress(conn, job_id, "n", 0.5, "half" * 200, worker="w1")
    with pytest.raises(errors.InvalidValue), engine.begin() as conn:
        set_progress(conn, job_id, "n", 1.5)
    row = run(sql, "SELECT progress, progress_message FROM job_nodes WHERE job_id = :j", j=job_id)[
        0
    ]
    assert row.progress == 0.5 and len(row.progress_message) == 500


def test_the_reporter_logs_every_message_and_throttles_progress(
    engine: Engine, sql: Any, job: Any
) -> None:
    job_id, user_id = job
    make_job_node(sql, job_id, user_id, "n")
    sql("UPDATE job_nodes SET status = 'running' WHERE job_id = :j", j=job_id)
    now = [100.0]
    reporter = ProgressReporter(engine, job_id, interval=1.0, clock=lambda: now[0])
    report = reporter.callback("n")

    def progress() -> tuple[float, str | None]:
        row = run(
            sql, "SELECT progress, progress_message FROM job_nodes WHERE job_id = :j", j=job_id
        )
        return row[0].progress, row[0].progress_message

    report(0.1, "first step")
    assert progress() == (pytest.approx(0.1), "first step")
    now[0] += 0.5
    report(0.5, "second step")  # within the second: a line, no progress write
    report(0.6, None)  # nothing at all
    assert progress() == (pytest.approx(0.1), "first step")
    now[0] += 0.6
    report(7.0, None)  # clamped to 1; progress only, no line
    assert progress() == (1.0, None)
    now[0] += 2
    report(float("nan"), "a line only")
    assert [r.message for r in lines(sql, job_id)] == [
        "node n (model) started",
        "first step",
        "second step",
        "a line only",
    ]
    assert {r.node_id for r in lines(sql, job_id)} == {"n"}
