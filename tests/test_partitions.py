"""The one monthly-partition function of the partitioned logs
(sql/triggers/partitions.sql): the audit trail and the request log both make their
months through ``public.partition_month`` / ``partition_months``; the calendar's
edges, bad instants, idempotence, the TRUNCATE refusal on each new partition, the
DEFAULT partition's rows moved in, and that only the owner's functions call it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from database import errors

from factories import scalar

NO_TRUNCATE = {
    "audit_events": "audit_events_immutable",
    "inference_requests": "inference_requests_append_only",
}


def parts(sql: Any, parent: str) -> set[str]:
    return {
        r[0]
        for r in sql(
            "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = CAST(:p AS regclass)",
            p=f"public.{parent}",
        )
    }


@pytest.mark.parametrize("parent", ["audit_events", "inference_requests"])
@pytest.mark.parametrize(
    ("at", "name", "lo", "hi"),
    [
        ("2031-12-31 23:59:59.999+00", "p203112", "2031-12-01", "2032-01-01"),
        ("2032-02-29 12:00:00+00", "p203202", "2032-02-01", "2032-03-01"),
        # 00:30 on Mar 1 in Paris is still February in UTC.
        ("2032-03-01 00:30:00+01", "p203202", "2032-02-01", "2032-03-01"),
        ("2032-01-01 00:00:00+00", "p203201", "2032-01-01", "2032-02-01"),
    ],
)
def test_the_month_of_an_instant_in_utc(sql, parent, at, name, lo, hi):
    made = sql(
        "SELECT public.partition_month(:p, CAST(:at AS timestamptz), :f)",
        p=parent,
        at=at,
        f=NO_TRUNCATE[parent],
    )[0][0]
    assert made == f"{parent}_{name}"
    bound = sql(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class AS c WHERE c.relname = :n",
        n=made,
    )[0][0]
    assert f"'{lo} 00:00:00+00'" in bound and f"'{hi} 00:00:00+00'" in bound, bound
    # Idempotent: the second call makes nothing.
    again = sql("SELECT public.partition_month(:p, CAST(:at AS timestamptz), 'x')", p=parent, at=at)
    assert again[0][0] is None
    # The parent's TRUNCATE refusal is on the new partition.
    assert (
        scalar(
            sql,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = CAST(:n AS regclass) AND tgname = :t",
            n=f"public.{made}",
            t=f"{parent}_no_truncate",
        )
        == 1
    )
    with pytest.raises(errors.DatabaseError) as refused:
        sql(f'TRUNCATE public."{made}"')
    assert refused.value.sqlstate in ("ML105", "ML085")


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)


@pytest.mark.parametrize("at", [None, "infinity", "-infinity"])
def test_no_partition_for_an_instant_that_is_not_one(sql, at):
    with pytest.raises((errors.DatabaseError, DBAPIError)) as refused:
        sql(
            "SELECT public.partition_month('audit_events', CAST(:at AS timestamptz),"
            " 'audit_events_immutable')",
            at=at,
        )
    assert sqlstate(refused.value) == "22023"
    for months in (-1, 121, None):
        with pytest.raises((errors.DatabaseError, DBAPIError)) as refused:
            sql(
                "SELECT public.partition_months('audit_events', now(), :n,"
                " 'audit_events_immutable')",
                n=months,
            )
        assert sqlstate(refused.value) == "22023"


def test_both_logs_make_their_months_through_it(sql):
    before = {p: parts(sql, p) for p in ("audit_events", "inference_requests")}
    made_audit = scalar(
        sql, "SELECT public.audit_events_ensure_partitions(CAST('2040-06-15Z' AS timestamptz), 1)"
    )
    assert made_audit == 2
    made_meter = [
        r[0]
        for r in sql(
            "SELECT public.inference_requests_partition_for(CAST('2040-06-15Z' AS timestamptz))"
        )
    ]
    assert made_meter == ["inference_requests_p204006"]
    assert parts(sql, "audit_events") - before["audit_events"] == {
        "audit_events_p204006",
        "audit_events_p204007",
    }
    assert parts(sql, "inference_requests") - before["inference_requests"] == {
        "inference_requests_p204006"
    }


def test_default_rows_move_into_their_new_month(sql):
    """The audit trail's DEFAULT partition catches a row of a month not made yet; the
    shared function moves it into the month when it is made (and the append-only
    rule lets only that move through)."""
    sql("SELECT public.audit_record('test.far', 'test', NULL, 'success', '{}', NULL)")
    row_id = sql(
        "INSERT INTO audit_events (action, entity_type, occurred_at)"
        " VALUES ('test.future', 'test', CAST('2045-03-10Z' AS timestamptz)) RETURNING id"
    )[0][0]
    assert scalar(sql, "SELECT count(*) FROM audit_events_default WHERE id = :i", i=row_id) == 1
    with pytest.raises(errors.DatabaseError) as refused:
        sql("DELETE FROM audit_events_default WHERE id = :i", i=row_id)
    assert refused.value.sqlstate == "ML105"
    sql("SELECT public.audit_events_ensure_partitions(CAST('2045-03-01Z' AS timestamptz), 0)")
    assert scalar(sql, "SELECT count(*) FROM audit_events_default WHERE id = :i", i=row_id) == 0
    assert scalar(sql, "SELECT count(*) FROM audit_events_p204503 WHERE id = :i", i=row_id) == 1


def test_the_apps_role_may_not_call_the_shared_functions(app_engine):
    for call in (
        "SELECT public.partition_month('audit_events', now(), 'audit_events_immutable')",
        "SELECT public.partition_months('inference_requests', now(), 1,"
        " 'inference_requests_append_only')",
    ):
        with (
            pytest.raises((errors.DatabaseError, DBAPIError)) as refused,
            app_engine.begin() as conn,
        ):
            conn.execute(text(call))
        assert sqlstate(refused.value) == "42501"
    # Through the logs' own functions it may (the workers make months ahead).
    with app_engine.begin() as conn:
        conn.execute(text("SELECT public.inference_requests_ensure_partitions(2)"))
        conn.execute(text("SELECT public.audit_events_ensure_partitions(now(), 3)"))
