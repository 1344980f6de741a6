"""The one storage trigger function, users_adjust_storage(size columns...) (storage.sql).

Dataset versions, models and batch outputs are counted in users.storage_used_bytes by
the same function; each trigger names its table's size columns. What it counts per
table is tested in test_storage.py (versions), test_derived_columns.py (models) and
the serving tests (batch outputs); here: that it is one function, that any table with
a user_id is counted by naming its columns, and that a wrong naming is refused without
counting anything.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from factories import make_user, scalar, storage

STORAGE_TRIGGERS = {
    "dataset_versions": ["original_size_bytes", "parquet_size_bytes"],
    "models": ["size_bytes"],
    "batch_outputs": ["size_bytes"],
}


def _storage_triggers(sql: Any, table: str) -> list[tuple[str, tuple[str, ...]]]:
    """(name, arguments) of the triggers on ``table`` that call users_adjust_storage()."""
    rows = sql(
        """
        SELECT t.tgname, pg_get_triggerdef(t.oid)
          FROM pg_trigger AS t
         WHERE t.tgrelid = to_regclass(:table) AND NOT t.tgisinternal
           AND t.tgfoid = 'public.users_adjust_storage()'::regprocedure
         ORDER BY t.tgname
        """,
        table=table,
    )
    out = []
    for name, definition in rows:
        args = re.search(r"users_adjust_storage\((.*)\)$", definition)
        assert args, definition
        out.append((name, tuple(re.findall(r"'([^']*)'", args.group(1)))))
    return out


def test_one_function_counts_every_stored_file(sql: Any) -> None:
    for table, columns in STORAGE_TRIGGERS.items():
        triggers = _storage_triggers(sql, table)
        # Insert, delete and update: three statement-level triggers, the table's columns.
        assert len(triggers) == 3, (table, triggers)
        assert {args for _, args in triggers} == {tuple(columns)}, table
    # The models' own copy of the function is gone, and no other function feeds
    # storage_used_bytes.
    assert scalar(sql, "SELECT to_regprocedure('public.users_adjust_model_storage()')") is None
    feeders = sql(
        """
        SELECT p.proname FROM pg_proc AS p
         WHERE p.pronamespace = 'public'::regnamespace
           AND p.prosrc LIKE '%users_apply_deltas(''storage_used_bytes''%'
        """
    )
    assert [r[0] for r in feeders] == ["users_adjust_storage"]


@pytest.fixture
def scratch(sql: Any) -> str:
    """A table of the test's own with a user and two size columns."""
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    sql(
        f"CREATE TABLE {name} (id serial PRIMARY KEY,"
        " user_id uuid NOT NULL REFERENCES users (id), a bigint, b bigint)"
    )
    return name


def _follow(sql: Any, table: str, *args: str) -> None:
    call = "public.users_adjust_storage(" + ", ".join(f"'{a}'" for a in args) + ")"
    for event, ref in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    ):
        sql(
            f"CREATE TRIGGER {table}_{event.lower()} AFTER {event} ON {table}"
            f" REFERENCING {ref} FOR EACH STATEMENT EXECUTE FUNCTION {call}"
        )


def test_any_table_is_counted_by_naming_its_size_columns(sql: Any, scratch: str) -> None:
    _follow(sql, scratch, "a", "b")
    u1, u2 = make_user(sql), make_user(sql)
    # A multi-row insert for two users; NULL counts as 0.
    sql(
        f"INSERT INTO {scratch} (user_id, a, b) VALUES"
        " (:u1, 10, 1), (:u1, NULL, 5), (:u2, 100, NULL), (:u2, NULL, NULL)",
        u1=u1,
        u2=u2,
    )
    assert (storage(sql, u1), storage(sql, u2)) == (16, 100)
    # A size written, and rows moving to another user, in one statement.
    sql(f"UPDATE {scratch} SET b = 7 WHERE user_id = :u2 AND a IS NULL", u2=u2)
    sql(f"UPDATE {scratch} SET user_id = :u2 WHERE a = 10", u2=u2)
    assert (storage(sql, u1), storage(sql, u2)) == (5, 118)
    sql(f"DELETE FROM {scratch} WHERE user_id = :u2", u2=u2)
    assert (storage(sql, u1), storage(sql, u2)) == (5, 0)
    sql(f"DELETE FROM {scratch}")
    assert storage(sql, u1) == 0


def test_a_trigger_naming_no_column_is_refused_and_counts_nothing(sql: Any, scratch: str) -> None:
    _follow(sql, scratch)
    u = make_user(sql)
    with pytest.raises(DBAPIError) as raised:
        sql(f"INSERT INTO {scratch} (user_id, a) VALUES (:u, 10)", u=u)
    assert raised.value.orig.sqlstate == "22023"  # invalid_parameter_value
    assert "name the size columns" in str(raised.value.orig)
    assert scalar(sql, f"SELECT count(*) FROM {scratch}") == 0
    assert storage(sql, u) == 0


def test_a_column_name_is_quoted_never_run_as_sql(sql: Any, scratch: str) -> None:
    _follow(sql, scratch, "a, 0) + (SELECT count(*) FROM users")
    u = make_user(sql)
    with pytest.raises(DBAPIError) as raised:
        sql(f"INSERT INTO {scratch} (user_id, a) VALUES (:u, 10)", u=u)
    assert raised.value.orig.sqlstate == "42703"  # undefined_column: the whole text is one name
    assert storage(sql, u) == 0
