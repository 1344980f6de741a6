"""users.storage_used_bytes (sql/triggers/storage.sql).

storage_used_bytes = sum over the user's dataset versions of
coalesce(original_size_bytes, 0) + coalesce(parquet_size_bytes, 0). Each test
changes versions some way and reads the total back, comparing it with the sum
recomputed from dataset_versions.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from database import errors
from database.models import Dataset, DatasetVersion, User

from factories import (
    assert_consistent,
    counts,
    make_dataset,
    make_ingestion_job,
    make_profile,
    make_user,
    make_version,
    run,
    scalar,
    storage,
    true_storage,
)


def test_insert_update_and_delete_of_versions(sql):
    # insert adds both sizes:
    u = make_user(sql)
    d = make_dataset(sql, u)
    make_version(sql, d, original=1000, parquet=300)
    assert storage(sql, u) == 1300
    make_version(sql, d, original=50)
    make_version(sql, d, parquet=7)
    make_version(sql, d)  # no sizes yet: counts 0
    assert storage(sql, u) == 1357
    assert_consistent(sql, u)

    # update of sizes:
    u = make_user(sql)
    d = make_dataset(sql, u)
    v = make_version(sql, d)
    assert storage(sql, u) == 0
    # NULL -> value (the upload, then the worker's Parquet copy)
    sql("UPDATE dataset_versions SET original_size_bytes = 500 WHERE id = :v", v=v)
    assert storage(sql, u) == 500
    sql("UPDATE dataset_versions SET parquet_size_bytes = 200 WHERE id = :v", v=v)
    assert storage(sql, u) == 700
    # value -> other value, or -> NULL: sizes are written once (ML022)
    for statement in (
        "UPDATE dataset_versions SET original_size_bytes = 1000, parquet_size_bytes = 1",
        "UPDATE dataset_versions SET original_size_bytes = NULL",
        "UPDATE dataset_versions SET parquet_size_bytes = NULL",
    ):
        with pytest.raises(errors.SizeReadOnly):
            sql(statement + " WHERE id = :v", v=v)
    assert storage(sql, u) == 700
    # an update of another column changes nothing
    sql("UPDATE dataset_versions SET status = 'completed', row_count = 3 WHERE id = :v", v=v)
    assert storage(sql, u) == 700
    assert_consistent(sql, u)

    # delete of version:
    u = make_user(sql)
    d = make_dataset(sql, u)
    v1 = make_version(sql, d, original=100, parquet=10)
    make_version(sql, d, original=5)
    sql("DELETE FROM dataset_versions WHERE id = :v", v=v1)
    assert storage(sql, u) == 5
    assert_consistent(sql, u)

    # large sizes do not overflow:
    u = make_user(sql)
    d = make_dataset(sql, u)
    big = 3 * 2**40  # 3 TiB: beyond a 32-bit integer
    make_version(sql, d, original=big, parquet=big)
    make_version(sql, d, original=big)
    assert storage(sql, u) == 3 * big
    assert_consistent(sql, u)


def test_cascades_take_storage_with_them(sql):
    # delete of whole dataset cascades:
    u = make_user(sql)
    d = make_dataset(sql, u)
    keep = make_dataset(sql, u)
    v = make_version(sql, d, original=100, parquet=10)
    make_version(sql, d, original=20, parquet=2)
    make_version(sql, keep, original=3)
    make_profile(sql, v)
    make_ingestion_job(sql, v)
    sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=v, d=d)
    assert storage(sql, u) == 135
    sql("DELETE FROM datasets WHERE id = :d", d=d)
    assert storage(sql, u) == 3
    assert counts(sql, u)[0] == 1
    assert_consistent(sql, u)

    # hard deleted user takes storage with it:
    u, keep = make_user(sql), make_user(sql)
    make_version(sql, make_dataset(sql, u), original=10)
    make_version(sql, make_dataset(sql, keep), original=7)
    sql("DELETE FROM users WHERE id = :u", u=u)
    assert scalar(sql, "SELECT count(*) FROM dataset_versions WHERE user_id = :u", u=u) == 0
    assert storage(sql, keep) == 7


def test_change_of_dataset_owner_moves_storage(sql):
    # change of dataset owner moves storage:
    a, b = make_user(sql), make_user(sql)
    d = make_dataset(sql, a)
    other = make_dataset(sql, a)
    v1 = make_version(sql, d, original=100, parquet=10)
    make_version(sql, d, original=1)
    make_version(sql, other, original=1000)
    make_ingestion_job(sql, v1)
    sql("UPDATE datasets SET user_id = :b WHERE id = :d", b=b, d=d)
    # the versions (and their ingestion jobs) follow through ON UPDATE CASCADE
    assert {
        r[0] for r in sql("SELECT user_id FROM dataset_versions WHERE dataset_id = :d", d=d)
    } == {b}
    assert (
        scalar(sql, "SELECT user_id FROM ingestion_jobs WHERE dataset_version_id = :v", v=v1) == b
    )
    assert storage(sql, a) == 1000
    assert storage(sql, b) == 111
    assert_consistent(sql, a, b)

    # change of owner for several datasets and users at once:
    a, b, c = make_user(sql), make_user(sql), make_user(sql)
    da, db_ = make_dataset(sql, a), make_dataset(sql, b)
    make_version(sql, da, original=10)
    make_version(sql, da, parquet=20)
    make_version(sql, db_, original=300)
    # a's dataset goes to b, b's to c, in one statement
    sql(
        """
        UPDATE datasets SET user_id = CASE user_id WHEN :a THEN CAST(:b AS uuid)
                                                    ELSE CAST(:c AS uuid) END
         WHERE id IN (:da, :db)
        """,
        a=a,
        b=b,
        c=c,
        da=da,
        db=db_,
    )
    assert (storage(sql, a), storage(sql, b), storage(sql, c)) == (0, 30, 300)
    assert_consistent(sql, a, b, c)


def test_version_owner_must_be_dataset_owner(sql):
    # version owner cannot differ from dataset owner:
    a, b = make_user(sql), make_user(sql)
    d = make_dataset(sql, a)
    with pytest.raises(errors.ReferenceViolation):
        make_version(sql, d, b, original=100)
    v = make_version(sql, d, original=100)
    # nor can a version be moved to another user (or dataset of another user) alone
    with pytest.raises(errors.ReferenceViolation):
        sql("UPDATE dataset_versions SET user_id = :b WHERE id = :v", b=b, v=v)
    d_b = make_dataset(sql, b)
    with pytest.raises(errors.ReferenceViolation):
        sql("UPDATE dataset_versions SET dataset_id = :d WHERE id = :v", d=d_b, v=v)
    assert (storage(sql, a), storage(sql, b)) == (100, 0)
    assert_consistent(sql, a, b)

    # version moved to another dataset of same owner:
    u = make_user(sql)
    d1, d2 = make_dataset(sql, u), make_dataset(sql, u)
    v = make_version(sql, d1, original=40)
    sql("UPDATE dataset_versions SET dataset_id = :d WHERE id = :v", d=d2, v=v)
    assert storage(sql, u) == 40
    assert_consistent(sql, u)


def test_refusals_change_nothing(engine: Engine, sql):
    # negative sizes refused:
    u = make_user(sql)
    d = make_dataset(sql, u)
    with pytest.raises(errors.InvalidValue):
        make_version(sql, d, original=-1)
    with pytest.raises(errors.InvalidValue):
        make_version(sql, d, parquet=-100)
    v = make_version(sql, d, original=10)
    with pytest.raises(errors.InvalidValue):
        sql("UPDATE dataset_versions SET parquet_size_bytes = -20 WHERE id = :v", v=v)
    assert storage(sql, u) == 10

    # storage cannot be written directly:
    u = make_user(sql)
    make_version(sql, make_dataset(sql, u), original=10)
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql("UPDATE users SET storage_used_bytes = 0 WHERE id = :u", u=u)
    assert storage(sql, u) == 10

    # rolled back transaction leaves storage:
    u = make_user(sql)
    d = make_dataset(sql, u)
    make_version(sql, d, original=10)
    with pytest.raises(errors.InvalidValue), engine.begin() as conn:
        make_version(conn, d, original=1000)
        assert storage(conn, u) == 1010
        make_version(conn, d, original=-5)
    assert storage(sql, u) == 10


def test_bulk_insert_update_delete_across_users(sql):
    users = [make_user(sql) for _ in range(3)]
    datasets = [make_dataset(sql, u) for u in users]
    # k versions of k*100 + k bytes for the k-th user, in one statement
    sql(
        """
        INSERT INTO dataset_versions (dataset_id, user_id, original_size_bytes, parquet_size_bytes)
        SELECT d.id, d.user_id, x.k * 100, x.k
          FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS x(id, k)
          JOIN datasets AS d ON d.id = x.id
          CROSS JOIN LATERAL generate_series(1, x.k::int)
        """,
        ids=datasets,
    )
    assert [storage(sql, u) for u in users] == [101, 404, 909]
    with pytest.raises(errors.SizeReadOnly):  # sizes are written once
        sql(
            "UPDATE dataset_versions SET parquet_size_bytes = NULL"
            " WHERE user_id = ANY(CAST(:ids AS uuid[]))",
            ids=users,
        )
    assert [storage(sql, u) for u in users] == [101, 404, 909]
    sql("DELETE FROM dataset_versions WHERE user_id = ANY(CAST(:ids AS uuid[]))", ids=users[1:])
    assert [storage(sql, u) for u in users] == [101, 0, 0]
    sql("DELETE FROM datasets WHERE user_id = ANY(CAST(:ids AS uuid[]))", ids=users)
    assert [storage(sql, u) for u in users] == [0, 0, 0]
    assert_consistent(sql, *users)


# --- the ORM -----------------------------------------------------------------------------
def _orm_storage(session: Session, user_id: uuid.UUID) -> int:
    return session.scalar(select(User.storage_used_bytes).where(User.id == user_id))


def test_orm_insert_update_delete(session: Session):
    # orm insert update delete:
    user = User(email="storage@example.com")
    session.add(user)
    session.flush()
    ds = Dataset(user_id=user.id, name="d")
    session.add(ds)
    session.flush()
    v1 = DatasetVersion(dataset_id=ds.id, user_id=user.id, original_size_bytes=1000)
    v2 = DatasetVersion(dataset_id=ds.id, user_id=user.id, parquet_size_bytes=50)
    session.add_all([v1, v2])
    session.commit()
    assert _orm_storage(session, user.id) == 1050

    v1.parquet_size_bytes = 400
    v2.original_size_bytes = 7
    session.commit()
    assert _orm_storage(session, user.id) == 1457
    v2.parquet_size_bytes = None
    with pytest.raises(errors.SizeReadOnly):
        session.commit()
    session.rollback()
    assert _orm_storage(session, user.id) == 1457

    session.delete(v1)
    session.commit()
    assert _orm_storage(session, user.id) == 57
    session.delete(v2)
    session.commit()
    assert _orm_storage(session, user.id) == 0

    session.add(DatasetVersion(dataset_id=ds.id, user_id=user.id, original_size_bytes=9))
    session.commit()
    session.delete(ds)
    session.commit()
    assert _orm_storage(session, user.id) == 0
    assert (
        session.scalar(select(DatasetVersion.id).where(DatasetVersion.dataset_id == ds.id)) is None
    )

    # orm bulk update:
    user = User(email="bulk-storage@example.com")
    session.add(user)
    session.flush()
    ds = Dataset(user_id=user.id, name="d")
    session.add(ds)
    session.flush()
    session.add_all(
        [
            DatasetVersion(dataset_id=ds.id, user_id=user.id, original_size_bytes=10)
            for _ in range(5)
        ]
    )
    session.commit()
    # The worker's Parquet sizes, set once in bulk; changing them after is refused.
    session.execute(
        update(DatasetVersion)
        .where(DatasetVersion.dataset_id == ds.id)
        .values(parquet_size_bytes=DatasetVersion.original_size_bytes * 2)
    )
    session.commit()
    assert _orm_storage(session, user.id) == 150
    with pytest.raises(errors.SizeReadOnly):
        session.execute(
            update(DatasetVersion)
            .where(DatasetVersion.dataset_id == ds.id)
            .values(original_size_bytes=DatasetVersion.original_size_bytes * 3)
        )
    session.rollback()
    assert _orm_storage(session, user.id) == 150


def test_orm_change_of_owner_and_mismatch(session: Session):
    # orm change of owner:
    a, b = User(email="owner-a@example.com"), User(email="owner-b@example.com")
    session.add_all([a, b])
    session.flush()
    ds = Dataset(user_id=a.id, name="d")
    session.add(ds)
    session.flush()
    session.add(DatasetVersion(dataset_id=ds.id, user_id=a.id, original_size_bytes=77))
    session.commit()
    ds.user_id = b.id
    session.commit()
    assert (_orm_storage(session, a.id), _orm_storage(session, b.id)) == (0, 77)
    owners = session.scalars(
        select(DatasetVersion.user_id).where(DatasetVersion.dataset_id == ds.id)
    ).all()
    assert owners == [b.id]

    # orm mismatched owner refused:
    a, b = User(email="mm-a@example.com"), User(email="mm-b@example.com")
    session.add_all([a, b])
    session.flush()
    ds = Dataset(user_id=a.id, name="d")
    session.add(ds)
    session.commit()
    session.add(DatasetVersion(dataset_id=ds.id, user_id=b.id, original_size_bytes=5))
    with pytest.raises(errors.ReferenceViolation):
        session.commit()
    session.rollback()
    assert (_orm_storage(session, a.id), _orm_storage(session, b.id)) == (0, 0)


# --- concurrency -------------------------------------------------------------------------
def test_concurrent_uploads_for_one_user(engine: Engine, sql):
    u = make_user(sql)
    datasets = [make_dataset(sql, u) for _ in range(4)]
    n = 16
    barrier = threading.Barrier(n)
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            with engine.begin() as conn:
                v = make_version(conn, datasets[i % 4], u, original=1000 + i)
                run(conn, "UPDATE dataset_versions SET parquet_size_bytes = 10 WHERE id = :v", v=v)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert storage(sql, u) == sum(1000 + i + 10 for i in range(n))
    assert storage(sql, u) == true_storage(sql, u)


def test_concurrent_owner_moves_and_uploads(engine: Engine, sql):
    """a's datasets move to b while b uploads new versions and a's Parquet sizes land."""
    a, b = make_user(sql), make_user(sql)
    moving = []
    for _ in range(6):
        d = make_dataset(sql, a)
        make_version(sql, d, original=100)
        make_version(sql, d, parquet=1)
        moving.append(d)
    staying = make_dataset(sql, a)
    resized = [make_version(sql, staying, original=1) for _ in range(3)]
    b_data = make_dataset(sql, b)
    n = 12
    barrier = threading.Barrier(n)
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            with engine.begin() as conn:
                if i < 6:
                    run(conn, "UPDATE datasets SET user_id = :b WHERE id = :d", b=b, d=moving[i])
                elif i < 9:
                    make_version(conn, b_data, b, original=1000)
                else:
                    run(
                        conn,
                        "UPDATE dataset_versions SET parquet_size_bytes = 4 WHERE id = :v",
                        v=resized[i - 9],
                    )
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert storage(sql, a) == 15
    assert storage(sql, b) == 6 * 101 + 3000
    assert_consistent(sql, a, b)
