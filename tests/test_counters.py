"""users.dataset_count, workflow_count and model_count (sql/triggers/counters.sql).

Each test tries to put a counter out of step with its table: single rows, bulk
statements over several users, cascades, changes of owner, soft delete, the ORM,
and concurrent writers. Every assertion reads the counters back from the database
and, where it matters, compares them with counts recomputed from the tables.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, delete, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from database import errors
from database.models import Dataset, Model, ProblemType, User, Workflow

from factories import (
    assert_consistent,
    counts,
    make_dataset,
    make_experiment,
    make_experiment_run,
    make_ingestion_job,
    make_job,
    make_job_node,
    make_model,
    make_profile,
    make_progress,
    make_snapshot,
    make_tutorial,
    make_user,
    make_version,
    make_workflow,
    run,
    scalar,
    true_counts,
)


# --- datasets -------------------------------------------------------------------------
def test_dataset_insert_delete_and_cascade(sql):
    # insert for missing user refused and counts nothing:
    with pytest.raises(errors.ReferenceViolation):
        make_dataset(sql, uuid.uuid4())
    assert scalar(sql, "SELECT count(*) FROM datasets") == 0

    # new user starts at zero:
    u = make_user(sql)
    assert counts(sql, u) == (0, 0, 0)

    # dataset insert and delete:
    u = make_user(sql)
    d1 = make_dataset(sql, u)
    d2 = make_dataset(sql, u)
    assert counts(sql, u)[0] == 2
    sql("DELETE FROM datasets WHERE id = :id", id=d1)
    assert counts(sql, u)[0] == 1
    sql("DELETE FROM datasets WHERE id = :id", id=d2)
    assert counts(sql, u)[0] == 0

    # dataset count with versions cascaded:
    u = make_user(sql)
    d = make_dataset(sql, u)
    v1 = make_version(sql, d, original=10)
    make_version(sql, d, original=20)
    make_profile(sql, v1)
    make_ingestion_job(sql, v1)
    sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=v1, d=d)
    make_dataset(sql, u)
    assert counts(sql, u)[0] == 2
    sql("DELETE FROM datasets WHERE id = :id", id=d)
    assert counts(sql, u)[0] == 1
    assert scalar(sql, "SELECT count(*) FROM dataset_versions WHERE dataset_id = :d", d=d) == 0
    assert_consistent(sql, u)

    # dataset update of other columns keeps count:
    u = make_user(sql)
    d = make_dataset(sql, u)
    make_dataset(sql, u)
    sql("UPDATE datasets SET name = 'renamed', description = 'x' WHERE user_id = :u", u=u)
    sql("UPDATE datasets SET user_id = user_id WHERE id = :d", d=d)  # same owner
    assert counts(sql, u)[0] == 2


def test_dataset_change_of_owner(sql):
    # dataset change of owner moves count:
    a, b = make_user(sql), make_user(sql)
    d = make_dataset(sql, a)
    make_dataset(sql, a)
    make_version(sql, d, original=5)
    sql("UPDATE datasets SET user_id = :b WHERE id = :d", b=b, d=d)
    assert counts(sql, a)[0] == 1
    assert counts(sql, b)[0] == 1
    # and back, in a bulk statement moving everything a owns to b
    sql("UPDATE datasets SET user_id = :b WHERE user_id = :a", a=a, b=b)
    assert counts(sql, a)[0] == 0
    assert counts(sql, b)[0] == 2
    assert_consistent(sql, a, b)

    # dataset swap owners in one statement:
    a, b = make_user(sql), make_user(sql)
    for _ in range(3):
        make_dataset(sql, a)
    make_dataset(sql, b)
    sql(
        """
        UPDATE datasets SET user_id = CASE WHEN user_id = :a THEN CAST(:b AS uuid)
                                           ELSE CAST(:a AS uuid) END
         WHERE user_id IN (:a, :b)
        """,
        a=a,
        b=b,
    )
    assert counts(sql, a)[0] == 1
    assert counts(sql, b)[0] == 3
    assert_consistent(sql, a, b)

    # dataset change to missing owner refused:
    u = make_user(sql)
    d = make_dataset(sql, u)
    with pytest.raises(errors.ReferenceViolation):
        sql("UPDATE datasets SET user_id = :x WHERE id = :d", x=uuid.uuid4(), d=d)
    assert counts(sql, u)[0] == 1


def test_rolled_back_work_counts_nothing(engine, sql):
    # failed statement leaves counts:
    u = make_user(sql)
    with pytest.raises(errors.InvalidValue), engine.begin() as conn:
        make_dataset(conn, u)
        make_dataset(conn, u)
        assert counts(conn, u)[0] == 2  # visible inside the transaction
        conn.execute(text("UPDATE users SET email = 'NOT LOWER' WHERE id = :u"), {"u": u})
    assert counts(sql, u)[0] == 0

    # savepoint rollback undoes count:
    u = make_user(sql)
    with engine.begin() as conn:
        make_dataset(conn, u)
        sp = conn.begin_nested()
        make_dataset(conn, u)
        make_dataset(conn, u)
        sp.rollback()
    assert counts(sql, u)[0] == 1
    assert_consistent(sql, u)


# --- multi-row, multi-user statements --------------------------------------------------
def test_insert_select_for_three_users_at_once(sql):
    users = [make_user(sql) for _ in range(3)]
    # 1, 2 and 3 datasets in one statement
    sql(
        """
        INSERT INTO datasets (user_id, name)
        SELECT u.id, 'd' || g
          FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS u(id, k)
          CROSS JOIN LATERAL generate_series(1, u.k::int) AS g
        """,
        ids=users,
    )
    assert [counts(sql, u)[0] for u in users] == [1, 2, 3]
    assert_consistent(sql, *users)


def test_delete_for_several_users_in_one_statement(sql):
    users = [make_user(sql) for _ in range(4)]
    for i, u in enumerate(users):
        for _ in range(i + 2):
            make_dataset(sql, u)
    # delete two of each of the first three users' datasets, none of the fourth's
    sql(
        """
        DELETE FROM datasets WHERE id IN (
            SELECT id FROM (
                SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY id) AS rn
                  FROM datasets WHERE user_id = ANY(CAST(:ids AS uuid[]))) AS x
             WHERE rn <= 2)
        """,
        ids=users[:3],
    )
    assert [counts(sql, u)[0] for u in users] == [0, 1, 2, 5]
    assert_consistent(sql, *users)


def test_bulk_models_and_workflows_for_several_users(sql):
    # bulk models and workflows for several users:
    users = [make_user(sql) for _ in range(3)]
    sql(
        """
        INSERT INTO models (user_id, name, algorithm, problem_type)
        SELECT u, 'm' || g, 'xgboost', 'regression'
          FROM unnest(CAST(:ids AS uuid[])) AS u, generate_series(1, 4) AS g
        """,
        ids=users,
    )
    # workflows: two live and one already-deleted per user
    sql(
        """
        INSERT INTO workflows (user_id, name, is_deleted, deleted_at)
        SELECT u, 'w' || g, g = 3, CASE WHEN g = 3 THEN now() END
          FROM unnest(CAST(:ids AS uuid[])) AS u, generate_series(1, 3) AS g
        """,
        ids=users,
    )
    for u in users:
        assert counts(sql, u) == (0, 2, 4)
    sql("DELETE FROM models WHERE user_id = ANY(CAST(:ids AS uuid[]))", ids=users[:2])
    sql("DELETE FROM workflows WHERE user_id = ANY(CAST(:ids AS uuid[]))", ids=users[1:])
    assert counts(sql, users[0]) == (0, 2, 0)
    assert counts(sql, users[1]) == (0, 0, 0)
    assert counts(sql, users[2]) == (0, 0, 4)
    assert_consistent(sql, *users)

    # bulk statement with no rows changes nothing:
    u = make_user(sql)
    make_dataset(sql, u)
    sql("DELETE FROM datasets WHERE name = 'no such'")
    sql("UPDATE datasets SET name = 'x' WHERE false")
    sql("INSERT INTO datasets (user_id, name) SELECT id, 'x' FROM users WHERE false")
    assert counts(sql, u)[0] == 1


# --- workflows and soft delete ----------------------------------------------------------
def test_workflow_soft_delete_and_restore(sql):
    # workflow soft delete and restore:
    u = make_user(sql)
    w = make_workflow(sql, u)
    make_workflow(sql, u)
    assert counts(sql, u)[1] == 2
    sql("UPDATE workflows SET is_deleted = true, deleted_at = now() WHERE id = :w", w=w)
    assert counts(sql, u)[1] == 1
    # soft-deleting again (a later deleted_at) must not decrement twice
    sql("UPDATE workflows SET deleted_at = now() + interval '1 day' WHERE id = :w", w=w)
    sql("UPDATE workflows SET name = 'still deleted' WHERE id = :w", w=w)
    assert counts(sql, u)[1] == 1
    sql("UPDATE workflows SET is_deleted = false, deleted_at = NULL WHERE id = :w", w=w)
    assert counts(sql, u)[1] == 2
    # restoring a live workflow again changes nothing
    sql("UPDATE workflows SET is_deleted = false, deleted_at = NULL WHERE id = :w", w=w)
    assert counts(sql, u)[1] == 2
    assert_consistent(sql, u)

    # inserting deleted workflow does not count:
    u = make_user(sql)
    w = make_workflow(sql, u, deleted=True)
    assert counts(sql, u)[1] == 0
    sql("DELETE FROM workflows WHERE id = :w", w=w)
    assert counts(sql, u)[1] == 0

    # deleting soft deleted workflow does not decrement:
    u = make_user(sql)
    w = make_workflow(sql, u)
    make_workflow(sql, u)
    sql("UPDATE workflows SET is_deleted = true, deleted_at = now() WHERE id = :w", w=w)
    assert counts(sql, u)[1] == 1
    sql("DELETE FROM workflows WHERE id = :w", w=w)
    assert counts(sql, u)[1] == 1
    assert_consistent(sql, u)


def test_soft_deleted_workflow_change_of_owner(sql):
    a, b = make_user(sql), make_user(sql)
    live = make_workflow(sql, a)
    dead = make_workflow(sql, a, deleted=True)
    sql("UPDATE workflows SET user_id = :b WHERE id IN (:x, :y)", b=b, x=live, y=dead)
    assert counts(sql, a)[1] == 0
    assert counts(sql, b)[1] == 1
    # change of owner and restore in the same statement
    sql(
        "UPDATE workflows SET user_id = :a, is_deleted = false, deleted_at = NULL WHERE id = :y",
        a=a,
        y=dead,
    )
    assert counts(sql, a)[1] == 1
    assert counts(sql, b)[1] == 1
    # change of owner and soft delete in the same statement
    sql(
        "UPDATE workflows SET user_id = :a, is_deleted = true, deleted_at = now() WHERE id = :x",
        a=a,
        x=live,
    )
    assert counts(sql, a)[1] == 1
    assert counts(sql, b)[1] == 0
    assert_consistent(sql, a, b)


def test_bulk_soft_delete_and_restore_across_users(sql):
    # bulk soft delete and restore across users:
    users = [make_user(sql) for _ in range(3)]
    for u in users:
        for _ in range(3):
            make_workflow(sql, u)
    sql(
        "UPDATE workflows SET is_deleted = true, deleted_at = now()"
        " WHERE user_id = ANY(CAST(:ids AS uuid[]))",
        ids=users,
    )
    assert [counts(sql, u)[1] for u in users] == [0, 0, 0]
    sql(
        """
        UPDATE workflows SET is_deleted = false, deleted_at = NULL
         WHERE id IN (SELECT id FROM workflows WHERE user_id = :u LIMIT 2)
            OR user_id = :v
        """,
        u=users[0],
        v=users[2],
    )
    assert [counts(sql, u)[1] for u in users] == [2, 0, 3]
    assert_consistent(sql, *users)

    # inconsistent soft delete refused:
    u = make_user(sql)
    w = make_workflow(sql, u)
    with pytest.raises(errors.InvalidValue):
        sql("UPDATE workflows SET is_deleted = true WHERE id = :w", w=w)
    with pytest.raises(errors.InvalidValue):
        sql("UPDATE workflows SET deleted_at = now() WHERE id = :w", w=w)
    with pytest.raises(errors.InvalidValue):
        make_workflow(sql, u, is_deleted=True)
    assert counts(sql, u)[1] == 1


# --- models ----------------------------------------------------------------------------
def test_models(sql):
    # model insert delete and owner change:
    a, b = make_user(sql), make_user(sql)
    m1 = make_model(sql, a)
    make_model(sql, a, job_id=make_job(sql, a))
    assert counts(sql, a)[2] == 2
    sql("UPDATE models SET user_id = :b WHERE id = :m", b=b, m=m1)
    assert (counts(sql, a)[2], counts(sql, b)[2]) == (1, 1)
    sql("DELETE FROM models WHERE id = :m", m=m1)
    assert (counts(sql, a)[2], counts(sql, b)[2]) == (1, 0)
    assert_consistent(sql, a, b)

    # model with other users job refused:
    a, b = make_user(sql), make_user(sql)
    job_b = make_job(sql, b)
    with pytest.raises(errors.ReferenceViolation):
        make_model(sql, a, job_id=job_b)
    m = make_model(sql, a, job_id=make_job(sql, a))
    # moving the model to b while it names a's job is refused too
    with pytest.raises(errors.ReferenceViolation):
        sql("UPDATE models SET user_id = :b WHERE id = :m", b=b, m=m)
    assert counts(sql, a)[2] == 1
    assert counts(sql, b)[2] == 0

    # model survives its job purge:
    u = make_user(sql)
    job = make_job(sql, u)
    m = make_model(sql, u, job_id=job)
    sql("DELETE FROM jobs WHERE id = :j", j=job)
    assert scalar(sql, "SELECT job_id FROM models WHERE id = :m", m=m) is None
    assert counts(sql, u)[2] == 1

    # model requires its columns:
    u = make_user(sql)
    with pytest.raises(errors.MissingValue):
        sql("INSERT INTO models (user_id, name, problem_type) VALUES (:u, 'm', 'other')", u=u)
    with pytest.raises(DBAPIError):  # not a rule of ours: PostgreSQL's own enum check
        sql(
            "INSERT INTO models (user_id, name, algorithm, problem_type)"
            " VALUES (:u, 'm', 'a', 'not-a-type')",
            u=u,
        )
    assert counts(sql, u)[2] == 0


# --- cascades from the user --------------------------------------------------------------
def test_hard_delete_user_cascades_everything(sql):
    u = make_user(sql)
    other = make_user(sql)
    d = make_dataset(sql, u)
    v = make_version(sql, d, original=100, parquet=50)
    sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=v, d=d)
    make_profile(sql, v)
    make_ingestion_job(sql, v)
    w = make_workflow(sql, u)
    make_workflow(sql, u, deleted=True)
    snap = make_snapshot(sql, u, workflow_id=w)
    job = make_job(sql, u, snap)
    make_job_node(sql, job, u)
    m = make_model(sql, u, job_id=job)
    exp = make_experiment(sql, u, dataset_id=d)
    make_experiment_run(sql, exp, u, job_id=job, model_id=m)
    make_progress(sql, u, make_tutorial(sql))
    # another user's rows, to see them untouched
    make_dataset(sql, other)
    make_model(sql, other)

    sql("DELETE FROM users WHERE id = :u", u=u)

    for table in (
        "datasets",
        "dataset_versions",
        "ingestion_jobs",
        "workflows",
        "workflow_snapshots",
        "jobs",
        "job_nodes",
        "models",
        "experiments",
        "experiment_runs",
        "user_tutorial_progress",
    ):
        assert scalar(sql, f"SELECT count(*) FROM {table} WHERE user_id = :u", u=u) == 0, table
    assert scalar(sql, "SELECT count(*) FROM dataset_profiles") == 0
    assert counts(sql, other) == (1, 0, 1)
    assert_consistent(sql, other)


def test_hard_delete_of_several_users_at_once(sql):
    users = [make_user(sql) for _ in range(3)]
    keep = make_user(sql)
    for u in [*users, keep]:
        make_dataset(sql, u)
        make_workflow(sql, u)
        make_model(sql, u, job_id=make_job(sql, u))
    sql("DELETE FROM users WHERE id = ANY(CAST(:ids AS uuid[]))", ids=users)
    assert scalar(sql, "SELECT count(*) FROM users") == 1
    assert counts(sql, keep) == (1, 1, 1)
    assert_consistent(sql, keep)


def _user_with_ledger_row(sql) -> uuid.UUID:
    u = make_user(sql)
    make_dataset(sql, u)
    sql(
        "INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
        " VALUES (:u, 'adjustment', 10, 'welcome bonus', 'test')",
        u=u,
    )
    return u


def test_user_with_ledger_rows_cannot_be_hard_deleted(sql):
    u = _user_with_ledger_row(sql)
    with pytest.raises(errors.ReferenceViolation):
        sql("DELETE FROM users WHERE id = :u", u=u)
    assert counts(sql, u) == (1, 0, 0)
    assert scalar(sql, "SELECT count(*) FROM datasets WHERE user_id = :u", u=u) == 1


def test_ledger_restrict_refusals_are_reference_violations(sql):
    u = _user_with_ledger_row(sql)
    job = make_job(sql, u)
    sql(
        "INSERT INTO credit_transactions (user_id, type, amount, job_id)"
        " VALUES (:u, 'consumption', -3, :j)",
        u=u,
        j=job,
    )
    with pytest.raises(errors.ReferenceViolation):
        sql("DELETE FROM jobs WHERE id = :j", j=job)
    with pytest.raises(errors.ReferenceViolation):
        sql("DELETE FROM users WHERE id = :u", u=u)


# --- TRUNCATE --------------------------------------------------------------------------
def test_truncate_cannot_leave_counters_stale(sql):
    u = make_user(sql)
    make_model(sql, u)
    with contextlib.suppress(errors.DatabaseError, DBAPIError):
        sql("TRUNCATE models CASCADE")  # refusing the TRUNCATE is a fine answer too
    assert counts(sql, u) == true_counts(sql, u)


# --- the ORM ---------------------------------------------------------------------------
def _orm_counts(session: Session, user_id: uuid.UUID) -> tuple[int, int, int]:
    row = session.execute(
        select(User.dataset_count, User.workflow_count, User.model_count).where(User.id == user_id)
    ).one()
    return tuple(row)


def test_orm_add_delete_and_change_of_owner(session: Session):
    # orm add and delete:
    user = User(email="orm@example.com")
    session.add(user)
    session.flush()
    assert (user.dataset_count, user.workflow_count, user.model_count) == (0, 0, 0)
    ds = [Dataset(user_id=user.id, name=f"d{i}") for i in range(3)]
    wf = Workflow(user_id=user.id, name="w")
    model = Model(
        user_id=user.id, name="m", algorithm="svm", problem_type=ProblemType.CLASSIFICATION
    )
    session.add_all([*ds, wf, model])
    session.commit()
    assert _orm_counts(session, user.id) == (3, 1, 1)
    # the User object itself picks the new values up on refresh
    session.refresh(user)
    assert user.dataset_count == 3

    session.delete(ds[0])
    session.delete(model)
    session.commit()
    assert _orm_counts(session, user.id) == (2, 1, 0)

    # orm change of owner:
    a, b = User(email="a@example.com"), User(email="b@example.com")
    session.add_all([a, b])
    session.flush()
    d = Dataset(user_id=a.id, name="d")
    session.add(d)
    session.commit()
    d.user_id = b.id
    session.commit()
    assert _orm_counts(session, a.id)[0] == 0
    assert _orm_counts(session, b.id)[0] == 1


def test_orm_soft_delete_and_restore(session: Session):
    user = User(email="soft@example.com")
    session.add(user)
    session.flush()
    wf = Workflow(user_id=user.id, name="w")
    session.add_all([wf, Workflow(user_id=user.id, name="w2")])
    session.commit()
    assert _orm_counts(session, user.id)[1] == 2

    wf.is_deleted = True
    wf.deleted_at = dt.datetime.now(dt.UTC)
    session.commit()
    assert _orm_counts(session, user.id)[1] == 1

    wf.is_deleted = False
    wf.deleted_at = None
    session.commit()
    assert _orm_counts(session, user.id)[1] == 2

    wf.is_deleted = True
    wf.deleted_at = dt.datetime.now(dt.UTC)
    session.commit()
    session.delete(wf)
    session.commit()
    assert _orm_counts(session, user.id)[1] == 1

    session.add(
        Workflow(
            user_id=user.id, name="born dead", is_deleted=True, deleted_at=dt.datetime.now(dt.UTC)
        )
    )
    session.commit()
    assert _orm_counts(session, user.id)[1] == 1


def test_orm_bulk_statements_and_user_delete(session: Session):
    # orm bulk statements:
    users = [User(email=f"bulk{i}@example.com") for i in range(3)]
    session.add_all(users)
    session.flush()
    ids = [u.id for u in users]
    session.execute(
        Dataset.__table__.insert(),
        [{"user_id": uid, "name": f"d{i}"} for i, uid in enumerate(ids) for _ in range(i + 1)],
    )
    session.commit()
    assert [_orm_counts(session, uid)[0] for uid in ids] == [1, 2, 3]
    session.execute(update(Dataset).where(Dataset.user_id == ids[2]).values(user_id=ids[0]))
    session.execute(delete(Dataset).where(Dataset.user_id == ids[1]))
    session.commit()
    assert [_orm_counts(session, uid)[0] for uid in ids] == [4, 0, 0]

    # orm delete user cascades:
    user = User(email="gone@example.com")
    keep = User(email="keep@example.com")
    session.add_all([user, keep])
    session.flush()
    session.add_all(
        [
            Dataset(user_id=user.id, name="d"),
            Workflow(user_id=user.id, name="w"),
            Dataset(user_id=keep.id, name="k"),
        ]
    )
    session.commit()
    session.delete(user)
    session.commit()
    assert session.scalar(select(Dataset.id).where(Dataset.user_id == user.id)) is None
    assert _orm_counts(session, keep.id) == (1, 0, 0)


# --- concurrency -----------------------------------------------------------------------
def _in_threads(n: int, work: Callable[[int], Any]) -> list[BaseException]:
    """Run ``work(i)`` in ``n`` threads released together; the exceptions raised."""
    barrier = threading.Barrier(n)
    failures: list[BaseException] = []
    lock = threading.Lock()

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    return failures


def test_concurrent_writers_for_one_user(engine: Engine, sql):
    # concurrent inserts for one user:
    u = make_user(sql)

    def work(i: int) -> None:
        with engine.begin() as conn:
            for _ in range(3):
                make_dataset(conn, u)
            make_workflow(conn, u)
            make_model(conn, u)

    assert _in_threads(20, work) == []
    assert counts(sql, u) == (60, 20, 20)
    assert_consistent(sql, u)

    # concurrent inserts and deletes for one user:
    u = make_user(sql)
    ids = [make_dataset(sql, u) for _ in range(20)]

    def work(i: int) -> None:
        with engine.begin() as conn:
            make_dataset(conn, u)
            run(conn, "DELETE FROM datasets WHERE id = :id", id=ids[i])

    assert _in_threads(20, work) == []
    assert counts(sql, u)[0] == 20
    assert_consistent(sql, u)


def test_concurrent_multi_user_statements_in_opposite_orders(engine: Engine, sql):
    """Bulk statements over the same four users, half naming them in one order and
    half in the other: users_apply_deltas locks the users rows in id order, so none
    deadlocks. Inserts, then deletes, each phase started together."""
    users = sorted(make_user(sql) for _ in range(4))
    threads = 12
    iterations = 3

    def order(i: int) -> list[uuid.UUID]:
        return users if i % 2 else users[::-1]

    def insert_datasets(i: int, it: int) -> None:
        with engine.begin() as conn:
            run(
                conn,
                """
                INSERT INTO datasets (user_id, name)
                SELECT u.id, :tag FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS u(id, k)
                 ORDER BY u.k
                """,
                ids=order(i),
                tag=f"t{it}-{i}",
            )

    def insert_models(i: int, it: int) -> None:
        with engine.begin() as conn:
            run(
                conn,
                """
                INSERT INTO models (user_id, name, algorithm, problem_type)
                SELECT u.id, :tag, 'a', 'other'
                  FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS u(id, k)
                 ORDER BY u.k
                """,
                ids=order(i),
                tag=f"t{it}-{i}",
            )

    def delete_datasets(i: int, it: int) -> None:
        if i % 3:  # a third of the threads delete what they inserted
            return
        with engine.begin() as conn:
            run(
                conn,
                """
                DELETE FROM datasets AS d
                 USING unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS u(id, k)
                 WHERE d.user_id = u.id AND d.name = :tag
                """,
                ids=order(i),
                tag=f"t{it}-{i}",
            )

    for it in range(iterations):
        for phase in (insert_datasets, insert_models, delete_datasets):
            assert _in_threads(threads, lambda i, phase=phase, it=it: phase(i, it)) == []
    deleted = len([i for i in range(threads) if i % 3 == 0])
    for u in users:
        assert counts(sql, u) == (
            (threads - deleted) * iterations,
            0,
            threads * iterations,
        )
    assert_consistent(sql, *users)


def test_concurrent_owner_swaps_do_not_deadlock(engine: Engine, sql):
    """Each statement touches the same two users (one -1, one +1); rows are locked in
    id order, so the documented promise is that none of them deadlocks.

    The deadlock is a race: up to 25 rounds of 32 concurrent swaps, stopping at the
    first round that fails (one round in three or so does, on the code as it is).
    """
    per_side = 16
    # an engine of its own, whose pool keeps a connection per thread between rounds
    swaps = errors.install(create_engine(engine.url, pool_size=2 * per_side, max_overflow=0))
    try:
        _swap_rounds(swaps, sql, per_side, rounds=25)
    finally:
        swaps.dispose()


def _swap_rounds(engine: Engine, sql, per_side: int, rounds: int) -> None:
    for _ in range(rounds):
        a, b = make_user(sql), make_user(sql)
        mine = {
            owner: [
                r[0]
                for r in sql(
                    "INSERT INTO datasets (user_id, name) SELECT :u, 'd' || g"
                    " FROM generate_series(1, :n) AS g RETURNING id",
                    u=owner,
                    n=per_side,
                )
            ]
            for owner in (a, b)
        }

        def work(i: int, a=a, b=b, mine=mine) -> None:
            src, dst = (a, b) if i % 2 else (b, a)
            with engine.begin() as conn:
                run(
                    conn,
                    "UPDATE datasets SET user_id = :dst WHERE id = :id",
                    dst=dst,
                    id=mine[src][i // 2],
                )

        failures = _in_threads(2 * per_side, work)
        # whatever failed, the counts still match the tables
        assert_consistent(sql, a, b)
        assert counts(sql, a)[0] + counts(sql, b)[0] == 2 * per_side
        assert failures == []
        assert counts(sql, a)[0] == counts(sql, b)[0] == per_side


@pytest.mark.parametrize(
    "table", ["datasets", "workflows", "models", "dataset_versions", "batch_outputs"]
)
def test_truncate_of_a_counted_table_is_refused(sql, table):
    # TRUNCATE fires no DELETE trigger, so each table the users' counters or
    # storage_used_bytes follow refuses it (ML003); CASCADE, so that no foreign key
    # refuses it first.
    with pytest.raises(errors.DerivedColumnReadOnly, match="TRUNCATE of"):
        sql(f"TRUNCATE {table} CASCADE")
