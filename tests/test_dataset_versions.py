"""Dataset version numbering (sql/triggers/dataset_versions.sql) and
datasets.current_version_id (a composite foreign key to dataset_versions).

A version inserted without version_number gets its dataset's next one (1, 2, 3,
...), also under concurrent uploads; an explicit number is kept and a duplicate
refused. The current version must be a version of the same dataset, and deleting
it clears the pointer, not the dataset.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from database import errors
from database.models import Dataset, DatasetVersion, FileFormat, User

from factories import make_dataset, make_user, make_version, run, scalar


def _numbers(db, dataset_id: uuid.UUID) -> list[int]:
    return [
        r[0]
        for r in run(
            db,
            "SELECT version_number FROM dataset_versions WHERE dataset_id = :d"
            " ORDER BY version_number",
            d=dataset_id,
        )
    ]


def _number(db, version_id: uuid.UUID) -> int:
    return scalar(db, "SELECT version_number FROM dataset_versions WHERE id = :v", v=version_id)


# --- numbering ---------------------------------------------------------------------------------
def test_numbers_follow_per_dataset(sql):
    u = make_user(sql)
    d1, d2 = make_dataset(sql, u), make_dataset(sql, u)
    a = [make_version(sql, d1) for _ in range(3)]
    b = make_version(sql, d2)
    assert [_number(sql, v) for v in a] == [1, 2, 3]
    assert _number(sql, b) == 1
    # an explicit NULL is "not given"
    c = make_version(sql, d2, version_number=None)
    assert _number(sql, c) == 2
    # other users' datasets number on their own
    d3 = make_dataset(sql, make_user(sql))
    assert _number(sql, make_version(sql, d3)) == 1


def test_numbers_in_one_multi_row_statement(sql):
    u = make_user(sql)
    d1, d2 = make_dataset(sql, u), make_dataset(sql, u)
    make_version(sql, d1)
    sql(
        """
        INSERT INTO dataset_versions (dataset_id, user_id, version_label)
        SELECT d.id, d.user_id, 'bulk' FROM datasets AS d, generate_series(1, 4)
         WHERE d.id IN (:d1, :d2)
        """,
        d1=d1,
        d2=d2,
    )
    assert _numbers(sql, d1) == [1, 2, 3, 4, 5]
    assert _numbers(sql, d2) == [1, 2, 3, 4]


def test_explicit_numbers(sql):
    u = make_user(sql)
    d = make_dataset(sql, u)
    make_version(sql, d)  # 1
    assert _number(sql, make_version(sql, d, version_number=10)) == 10
    assert _number(sql, make_version(sql, d)) == 11  # the next after the highest
    with pytest.raises(errors.AlreadyExists) as info:
        make_version(sql, d, version_number=10)
    assert info.value.constraint == "uq_dataset_versions_dataset_id_version_number"
    with pytest.raises(errors.AlreadyExists):
        make_version(sql, d, version_number=1)
    for bad in (0, -1):
        with pytest.raises(errors.InvalidValue):
            make_version(sql, d, version_number=bad)
    # the same explicit number in another dataset is fine
    assert _number(sql, make_version(sql, make_dataset(sql, u), version_number=10)) == 10
    assert _numbers(sql, d) == [1, 10, 11]


def test_updates_of_numbers_checked(sql):
    u = make_user(sql)
    d = make_dataset(sql, u)
    v1, v2 = make_version(sql, d), make_version(sql, d)
    with pytest.raises(errors.AlreadyExists):
        sql("UPDATE dataset_versions SET version_number = 1 WHERE id = :v", v=v2)
    with pytest.raises(errors.MissingValue):
        sql("UPDATE dataset_versions SET version_number = NULL WHERE id = :v", v=v2)
    with pytest.raises(errors.InvalidValue):
        sql("UPDATE dataset_versions SET version_number = 0 WHERE id = :v", v=v1)
    # moving a version into a dataset that has its number already
    other = make_dataset(sql, u)
    make_version(sql, other)
    with pytest.raises(errors.AlreadyExists):
        sql("UPDATE dataset_versions SET dataset_id = :o WHERE id = :v", o=other, v=v1)
    assert _numbers(sql, d) == [1, 2]


def test_version_of_missing_dataset_refused(sql):
    u = make_user(sql)
    with pytest.raises(errors.ReferenceViolation):
        make_version(sql, uuid.uuid4(), u)
    with pytest.raises(errors.ReferenceViolation):  # owner mismatch
        make_version(sql, make_dataset(sql, u), make_user(sql))
    assert scalar(sql, "SELECT count(*) FROM dataset_versions") == 0


def test_orm_gets_numbers_back(session: Session, sql):
    user = User(email="versions@example.com")
    session.add(user)
    session.flush()
    ds = Dataset(user_id=user.id, name="d")
    session.add(ds)
    session.flush()
    first = DatasetVersion(dataset_id=ds.id, user_id=user.id)
    session.add(first)
    session.flush()
    assert first.version_number == 1
    # several in one flush
    batch = [DatasetVersion(dataset_id=ds.id, user_id=user.id) for _ in range(3)]
    session.add_all(batch)
    session.flush()
    assert sorted(v.version_number for v in batch) == [2, 3, 4]
    session.commit()
    for v in [first, *batch]:
        assert v.version_number == _number(sql, v.id)
    # explicit numbers
    explicit = DatasetVersion(dataset_id=ds.id, user_id=user.id, version_number=7)
    session.add(explicit)
    session.commit()
    assert _number(sql, explicit.id) == 7
    session.add(DatasetVersion(dataset_id=ds.id, user_id=user.id, version_number=7))
    with pytest.raises(errors.AlreadyExists):
        session.commit()
    session.rollback()
    # and a bulk insert through the ORM
    session.execute(
        insert(DatasetVersion), [{"dataset_id": ds.id, "user_id": user.id} for _ in range(2)]
    )
    session.commit()
    assert _numbers(sql, ds.id) == [1, 2, 3, 4, 7, 8, 9]


# --- concurrency -------------------------------------------------------------------------------
def _run_threads(n: int, work) -> list[BaseException]:
    barrier = threading.Barrier(n)
    failures: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return failures


def test_concurrent_uploads_get_consecutive_numbers(engine: Engine, sql):
    u = make_user(sql)
    d = make_dataset(sql, u)
    n = 16

    def work(i: int) -> None:
        with engine.begin() as conn:
            make_version(conn, d, u, original=i)

    assert _run_threads(n, work) == []
    assert _numbers(sql, d) == list(range(1, n + 1))


def test_concurrent_multi_version_transactions(engine: Engine, sql):
    """Each thread adds three versions to each of two datasets in one transaction."""
    u = make_user(sql)
    d1, d2 = make_dataset(sql, u), make_dataset(sql, u)
    n = 12

    def work(i: int) -> None:
        with engine.begin() as conn:
            for d in (d1, d2):
                for _ in range(3):
                    make_version(conn, d, u, parquet=1)

    assert _run_threads(n, work) == []
    assert _numbers(sql, d1) == list(range(1, 3 * n + 1))
    assert _numbers(sql, d2) == list(range(1, 3 * n + 1))
    assert scalar(sql, "SELECT storage_used_bytes FROM users WHERE id = :u", u=u) == 6 * n


def test_concurrent_orm_sessions(session_factory: sessionmaker[Session], sql):
    u = make_user(sql)
    d = make_dataset(sql, u)
    got: dict[int, int] = {}

    def work(i: int) -> None:
        with session_factory() as s:
            v = DatasetVersion(dataset_id=d, user_id=u, original_size_bytes=1)
            s.add(v)
            s.commit()
            got[i] = v.version_number

    assert _run_threads(12, work) == []
    assert sorted(got.values()) == list(range(1, 13))
    assert _numbers(sql, d) == list(range(1, 13))


# --- current_version_id ------------------------------------------------------------------------
def test_current_version_must_be_of_the_same_dataset(sql):
    u = make_user(sql)
    d1, d2 = make_dataset(sql, u), make_dataset(sql, u)
    # distinct numbers, so that moving v1 into d2 below is refused by the pointer only
    v1, v2 = make_version(sql, d1, version_number=5), make_version(sql, d2)
    sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=v1, d=d1)
    with pytest.raises(errors.ReferenceViolation):
        sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=v2, d=d1)
    with pytest.raises(errors.ReferenceViolation):
        sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=uuid.uuid4(), d=d2)
    # another user's version, too
    other = make_version(sql, make_dataset(sql, make_user(sql)))
    with pytest.raises(errors.ReferenceViolation):
        sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=other, d=d2)
    # at insert time (the dataset id given explicitly)
    with pytest.raises(errors.ReferenceViolation):
        make_dataset(sql, u, current_version_id=v2)
    # nor can the current version move to another dataset under the pointer
    with pytest.raises(errors.ReferenceViolation):
        sql("UPDATE dataset_versions SET dataset_id = :d WHERE id = :v", d=d2, v=v1)
    assert scalar(sql, "SELECT current_version_id FROM datasets WHERE id = :d", d=d1) == v1
    assert scalar(sql, "SELECT current_version_id FROM datasets WHERE id = :d", d=d2) is None


def test_deleting_current_version_clears_pointer_only(sql):
    u = make_user(sql)
    d = make_dataset(sql, u, name="keep me")
    v1, v2 = make_version(sql, d, original=1), make_version(sql, d, original=2)
    sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=v2, d=d)
    # deleting another version leaves the pointer
    sql("DELETE FROM dataset_versions WHERE id = :v", v=v1)
    assert scalar(sql, "SELECT current_version_id FROM datasets WHERE id = :d", d=d) == v2
    sql("DELETE FROM dataset_versions WHERE id = :v", v=v2)
    row = run(sql, "SELECT name, current_version_id, user_id FROM datasets WHERE id = :d", d=d)
    assert tuple(row[0]) == ("keep me", None, u)
    assert scalar(sql, "SELECT dataset_count FROM users WHERE id = :u", u=u) == 1
    assert _numbers(sql, d) == []


def test_numbers_of_deleted_versions_are_not_reused(sql):
    u = make_user(sql)
    d = make_dataset(sql, u)
    make_version(sql, d)
    v2 = make_version(sql, d)
    sql("DELETE FROM dataset_versions WHERE id = :v", v=v2)
    assert _number(sql, make_version(sql, d)) == 3
    assert scalar(sql, "SELECT last_version_number FROM datasets WHERE id = :d", d=d) == 3


def test_explicit_numbers_lift_the_counter(sql):
    """A version given its number (a bulk load) moves the counter too: the next
    unnumbered version never takes a number given before, even one deleted since."""
    u = make_user(sql)
    d = make_dataset(sql, u)
    sql(
        "INSERT INTO dataset_versions (dataset_id, user_id, version_number, original_format)"
        " SELECT :d, :u, n, 'csv' FROM generate_series(1, 5) AS n",
        d=d,
        u=u,
    )
    sql("DELETE FROM dataset_versions WHERE dataset_id = :d AND version_number = 5", d=d)
    assert _number(sql, make_version(sql, d)) == 6
    # renumbered by hand upwards: the counter follows
    sql(
        "UPDATE dataset_versions SET version_number = 10 WHERE dataset_id = :d"
        " AND version_number = 1",
        d=d,
    )
    assert _number(sql, make_version(sql, d)) == 11


def test_the_version_counter_never_goes_down(sql, session: Session):
    u = make_user(sql)
    d = make_dataset(sql, u)
    make_version(sql, d)
    make_version(sql, d)
    with pytest.raises(errors.VersionCounterDecrease) as refused:
        sql("UPDATE datasets SET last_version_number = 0 WHERE id = :d", d=d)
    assert refused.value.sqlstate == "ML011"
    sql("UPDATE datasets SET last_version_number = 7 WHERE id = :d", d=d)  # up is fine
    assert _number(sql, make_version(sql, d)) == 8
    dataset = session.get(Dataset, d)
    assert dataset is not None
    dataset.last_version_number = 1
    with pytest.raises(errors.VersionCounterDecrease):
        session.flush()


def test_orm_numbers_are_not_reused(session: Session, sql):
    user = User(email="numbers@example.com")
    session.add(user)
    session.flush()
    dataset = Dataset(user_id=user.id, name="n")
    session.add(dataset)
    session.flush()
    first = DatasetVersion(dataset_id=dataset.id, user_id=user.id, original_format=FileFormat.CSV)
    session.add(first)
    session.flush()
    session.delete(first)
    session.flush()
    again = DatasetVersion(dataset_id=dataset.id, user_id=user.id, original_format=FileFormat.CSV)
    session.add(again)
    session.flush()
    assert again.version_number == 2


def test_current_version_survives_change_of_owner(sql):
    a, b = make_user(sql), make_user(sql)
    d = make_dataset(sql, a)
    v = make_version(sql, d, original=9)
    sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=v, d=d)
    sql("UPDATE datasets SET user_id = :b WHERE id = :d", b=b, d=d)
    row = run(
        sql,
        "SELECT d.current_version_id, v.user_id FROM datasets AS d"
        " JOIN dataset_versions AS v ON v.id = d.current_version_id WHERE d.id = :d",
        d=d,
    )
    assert tuple(row[0]) == (v, b)


def test_orm_current_version(session: Session, sql):
    user = User(email="current@example.com")
    session.add(user)
    session.flush()
    d1, d2 = Dataset(user_id=user.id, name="a"), Dataset(user_id=user.id, name="b")
    session.add_all([d1, d2])
    session.flush()
    v1 = DatasetVersion(dataset_id=d1.id, user_id=user.id)
    v2 = DatasetVersion(dataset_id=d2.id, user_id=user.id)
    session.add_all([v1, v2])
    session.flush()
    d1.current_version_id = v1.id
    session.commit()

    d2.current_version_id = v1.id  # a version of another dataset
    with pytest.raises(errors.ReferenceViolation):
        session.commit()
    session.rollback()
    assert scalar(sql, "SELECT current_version_id FROM datasets WHERE id = :d", d=d2.id) is None

    session.delete(v1)
    session.commit()
    stored = session.execute(
        select(Dataset.id, Dataset.current_version_id).where(Dataset.id == d1.id)
    ).one()
    assert stored.current_version_id is None
    session.refresh(d1)
    assert d1.current_version_id is None
