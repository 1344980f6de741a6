"""The users columns only triggers write (sql/triggers/users_derived.sql), and the
CHECK constraints of users.

credit_balance, dataset_count, workflow_count, model_count and storage_used_bytes
cannot be written by a client: a direct UPDATE or a non-zero INSERT fails with
ML003 (DerivedColumnReadOnly) and changes nothing, whichever way it is tried.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from database import errors
from database.models import User, UserTier

from factories import (
    DERIVED,
    make_dataset,
    make_model,
    make_user,
    make_version,
    make_workflow,
    run,
    scalar,
    user_derived,
)


def _user_with_everything(sql) -> uuid.UUID:
    """A user whose every derived column is non-zero."""
    u = make_user(sql)
    make_version(sql, make_dataset(sql, u), original=100, parquet=20)
    make_workflow(sql, u)
    make_model(sql, u)
    sql(
        "INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
        " VALUES (:u, 'adjustment', 50, 'test credit', 'tests')",
        u=u,
    )
    return u


EXPECTED = {
    "credit_balance": 50,
    "dataset_count": 1,
    "workflow_count": 1,
    "model_count": 1,
    "storage_used_bytes": 120,
}


# --- UPDATE --------------------------------------------------------------------------------
def test_direct_update_refused(sql):
    u = _user_with_everything(sql)
    assert user_derived(sql, u) == EXPECTED
    for column in DERIVED:
        for value in ("5", "0", "-1", "{col} + 1", "{col} - 1", "NULL"):
            expr = value.format(col=column)
            with pytest.raises(errors.DerivedColumnReadOnly) as info:
                sql(f"UPDATE users SET {column} = {expr} WHERE id = :u", u=u)
            assert info.value.sqlstate == "ML003", (column, value)
            assert column in info.value.message, (column, value)
        # a legitimate change in the same statement does not carry the derived one through
        with pytest.raises(errors.DerivedColumnReadOnly):
            sql(f"UPDATE users SET full_name = 'Mallory', {column} = 999 WHERE id = :u", u=u)
    assert scalar(sql, "SELECT full_name FROM users WHERE id = :u", u=u) is None
    assert user_derived(sql, u) == EXPECTED


def test_update_of_several_derived_columns_names_them(sql):
    u = _user_with_everything(sql)
    with pytest.raises(errors.DerivedColumnReadOnly) as info:
        sql("UPDATE users SET dataset_count = 0, storage_used_bytes = 0 WHERE id = :u", u=u)
    assert "dataset_count" in info.value.message
    assert "storage_used_bytes" in info.value.message
    assert user_derived(sql, u) == EXPECTED


def test_bulk_update_of_every_user_refused(sql):
    u = _user_with_everything(sql)
    fresh = make_user(sql)
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql("UPDATE users SET model_count = 0")
    assert user_derived(sql, u) == EXPECTED
    assert user_derived(sql, fresh) == dict.fromkeys(DERIVED, 0)


def test_disguised_updates_refused(sql):
    """The same write hidden in a data-modifying CTE, a DO block or an upsert."""
    u = _user_with_everything(sql)
    email = scalar(sql, "SELECT email FROM users WHERE id = :u", u=u)
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql(
            """
            WITH d AS (INSERT INTO datasets (user_id, name) VALUES (:u, 'cte') RETURNING user_id)
            UPDATE users SET dataset_count = 100 FROM d WHERE users.id = d.user_id
            """,
            u=u,
        )
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql(f"DO $$ BEGIN UPDATE users SET workflow_count = 7 WHERE id = '{u}'; END $$")
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql(
            "INSERT INTO users (email) VALUES (:e)"
            " ON CONFLICT (email) DO UPDATE SET credit_balance = 1000000",
            e=email,
        )
    assert user_derived(sql, u) == EXPECTED
    assert scalar(sql, "SELECT count(*) FROM datasets WHERE user_id = :u", u=u) == 1


def test_same_value_is_not_a_write(sql):
    """Assigning a column its own value changes nothing, so it is allowed."""
    u = _user_with_everything(sql)
    sql(
        "UPDATE users SET dataset_count = dataset_count, credit_balance = credit_balance,"
        " full_name = 'Same' WHERE id = :u",
        u=u,
    )
    assert user_derived(sql, u) == EXPECTED
    assert scalar(sql, "SELECT full_name FROM users WHERE id = :u", u=u) == "Same"


def test_other_columns_can_be_updated(sql):
    u = _user_with_everything(sql)
    sql(
        "UPDATE users SET full_name = 'Ada', tier = 'pro', email_verified = true,"
        " email = 'ada@example.com' WHERE id = :u",
        u=u,
    )
    sql("UPDATE users SET is_deleted = true, deleted_at = now() WHERE id = :u", u=u)
    row = run(
        sql, "SELECT full_name, tier, email_verified, is_deleted FROM users WHERE id = :u", u=u
    )
    assert tuple(row[0]) == ("Ada", "pro", True, True)
    assert user_derived(sql, u) == EXPECTED


# --- INSERT --------------------------------------------------------------------------------
def test_insert_with_non_zero_value_refused(sql):
    for column in DERIVED:
        for value in (1, -1, 1_000_000):
            with pytest.raises(errors.DerivedColumnReadOnly) as info:
                make_user(sql, **{column: value})
            assert info.value.sqlstate == "ML003", (column, value)
            assert column in info.value.message, (column, value)
    assert scalar(sql, "SELECT count(*) FROM users") == 0


def test_insert_with_explicit_zeros_allowed(sql):
    u = make_user(sql, **dict.fromkeys(DERIVED, 0))
    assert user_derived(sql, u) == dict.fromkeys(DERIVED, 0)


def test_multi_row_insert_with_one_bad_row_refused_whole(sql):
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql(
            "INSERT INTO users (email, model_count) VALUES"
            " ('ok1@example.com', 0), ('bad@example.com', 3), ('ok2@example.com', 0)"
        )
    assert scalar(sql, "SELECT count(*) FROM users") == 0


def test_insert_select_copying_another_users_counters_refused(sql):
    _user_with_everything(sql)
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql(
            "INSERT INTO users (email, dataset_count, storage_used_bytes)"
            " SELECT 'copy@example.com', dataset_count, storage_used_bytes FROM users"
        )
    assert scalar(sql, "SELECT count(*) FROM users") == 1


# --- users_apply_deltas called by a client --------------------------------------------------
def test_client_cannot_call_apply_deltas(sql):
    u = _user_with_everything(sql)
    v = make_user(sql)
    for column in ("dataset_count", "workflow_count", "model_count", "storage_used_bytes"):
        for delta in (5, -1):
            with pytest.raises(errors.DerivedColumnReadOnly):
                sql(
                    f"SELECT public.users_apply_deltas('{column}', ARRAY[:u]::uuid[],"
                    f" ARRAY[{delta}]::bigint[])",
                    u=u,
                )
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql(
            "SELECT public.users_apply_deltas('model_count', ARRAY[:u, :v]::uuid[],"
            " ARRAY[-1, 4]::bigint[])",
            u=u,
            v=v,
        )
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql(
            "DO $$ BEGIN PERFORM public.users_apply_deltas('dataset_count',"
            f" ARRAY['{u}']::uuid[], ARRAY[-1]::bigint[]); END $$"
        )
    with pytest.raises(DBAPIError):  # credit_balance is not among its columns at all
        sql(
            "SELECT public.users_apply_deltas('credit_balance', ARRAY[:u]::uuid[],"
            " ARRAY[5]::bigint[])",
            u=u,
        )
    assert user_derived(sql, u) == EXPECTED
    assert user_derived(sql, v) == dict.fromkeys(DERIVED, 0)


# --- the ORM ---------------------------------------------------------------------------------
def test_orm_attribute_write_refused(session: Session, sql):
    u = _user_with_everything(sql)
    for column in DERIVED:
        user = session.get(User, u)
        setattr(user, column, 12345)
        with pytest.raises(errors.DerivedColumnReadOnly):
            session.commit()
        session.rollback()
        assert user_derived(sql, u) == EXPECTED, column
    # and after the rollback the object shows the stored values again
    user = session.get(User, u)
    session.refresh(user)
    assert {c: getattr(user, c) for c in DERIVED} == EXPECTED


def test_orm_insert_with_counter_refused(session: Session, sql):
    session.add(User(email="orm-insert@example.com", model_count=3))
    with pytest.raises(errors.DerivedColumnReadOnly):
        session.commit()
    session.rollback()
    assert scalar(sql, "SELECT count(*) FROM users") == 0


def test_orm_bulk_statements_refused(session: Session, sql):
    u = _user_with_everything(sql)
    with pytest.raises(errors.DerivedColumnReadOnly):
        session.execute(update(User).where(User.id == u).values(storage_used_bytes=0))
    session.rollback()
    with pytest.raises(errors.DerivedColumnReadOnly):
        session.execute(insert(User).values(email="bulk-orm@example.com", credit_balance=10))
    session.rollback()
    assert user_derived(sql, u) == EXPECTED


def test_orm_profile_edit_does_not_write_back_stale_counters(session: Session, sql):
    """A User loaded before its counters moved can still be edited: the ORM sends
    only the changed column, and refreshes the counters from the UPDATE's RETURNING."""
    u = make_user(sql)
    user = session.get(User, u)
    assert user.dataset_count == 0
    session.commit()  # end the transaction; the object keeps its (now stale) values
    make_dataset(sql, u)
    make_version(sql, make_dataset(sql, u), original=10)
    user.full_name = "Edited"
    user.tier = UserTier.PRO
    session.commit()
    assert user.dataset_count == 2
    assert user.storage_used_bytes == 10
    assert user_derived(sql, u)["dataset_count"] == 2
    assert scalar(sql, "SELECT full_name FROM users WHERE id = :u", u=u) == "Edited"


def test_orm_other_columns_work(session: Session, sql):
    u = _user_with_everything(sql)
    user = session.get(User, u)
    user.full_name = "Grace"
    user.tier = UserTier.ENTERPRISE
    user.email_verified = True
    session.commit()
    user.is_deleted = True
    user.deleted_at = dt.datetime.now(dt.UTC)
    session.commit()
    row = run(sql, "SELECT full_name, tier, is_deleted FROM users WHERE id = :u", u=u)[0]
    assert tuple(row) == ("Grace", "enterprise", True)
    assert user_derived(sql, u) == EXPECTED


# --- CHECK constraints of users ----------------------------------------------------------------
def test_bad_email_refused(sql):
    u = make_user(sql)
    for email in (
        "Upper@example.com",
        "no-at-sign.example.com",
        "@example.com",
        "user@",
        " padded@example.com",
        "padded@example.com ",
        "",
    ):
        with pytest.raises(errors.InvalidValue):
            make_user(sql, email=email)
        with pytest.raises(errors.InvalidValue):
            sql("UPDATE users SET email = :e WHERE id = :u", e=email, u=u)
    assert scalar(sql, "SELECT count(*) FROM users") == 1
    assert scalar(sql, "SELECT email FROM users WHERE id = :u", u=u).endswith("@example.com")


def test_soft_delete_must_agree_with_deleted_at(sql):
    with pytest.raises(errors.InvalidValue):
        make_user(sql, is_deleted=True)
    with pytest.raises(errors.InvalidValue):
        make_user(sql, deleted_at=dt.datetime.now(dt.UTC))
    u = make_user(sql)
    with pytest.raises(errors.InvalidValue):
        sql("UPDATE users SET is_deleted = true WHERE id = :u", u=u)
    with pytest.raises(errors.InvalidValue):
        sql("UPDATE users SET deleted_at = now() WHERE id = :u", u=u)
    sql("UPDATE users SET is_deleted = true, deleted_at = now() WHERE id = :u", u=u)
    with pytest.raises(errors.InvalidValue):
        sql("UPDATE users SET is_deleted = false WHERE id = :u", u=u)
    assert scalar(sql, "SELECT is_deleted FROM users WHERE id = :u", u=u) is True


def test_oauth_pair_and_unique_email(sql):
    make_user(sql, email="dup@example.com")
    with pytest.raises(errors.AlreadyExists):
        make_user(sql, email="dup@example.com")
    with pytest.raises(errors.InvalidValue):
        make_user(sql, oauth_provider="google")
    with pytest.raises(errors.InvalidValue):
        make_user(sql, oauth_id="12345")
    make_user(sql, oauth_provider="github", oauth_id="12345")


def test_orm_check_constraints(session: Session):
    session.add(User(email="Mixed@Example.com"))
    with pytest.raises(errors.InvalidValue):
        session.commit()
    session.rollback()
    session.add(User(email="ok@example.com", is_deleted=True))
    with pytest.raises(errors.InvalidValue):
        session.commit()
    session.rollback()
    assert session.scalar(select(text("count(*)")).select_from(User)) == 0
