"""Billing alerts checked only on a crossing (issue 16, c16c00000001).

The user's row carries the next thresholds (users.alert_below, alert_rearm,
alert_spend_above, alert_spend, alert_spend_until), kept by billing_alerts_sync
(sql/triggers/billing.sql); the ledger's balance UPDATE compares the entry's new
balance and the month's spend with them and calls billing_alerts_check only when one
is crossed. These tests hold the thresholds to the alerts, count the check's calls,
fire at a month's edge, keep firing exactly once under concurrent charges, and refuse
any write of the thresholds but the triggers' (raw SQL, ORM, the apps' role).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session

from database import billing, credits, errors
from database.billing import alert_threshold_drift
from database.models import User
from database.verify import verify

from factories import make_job, make_user, scalar

HOOK = "https://example.com/hook"


def give(engine: Engine, user_id: uuid.UUID, amount: int) -> None:
    with Session(engine) as s:
        credits.adjust(s, user_id, amount, "test credits", "tests")


def charge(engine: Engine, user_id: uuid.UUID, amount: int) -> uuid.UUID:
    """A job of ``amount`` credits, charged."""
    with engine.begin() as conn:
        job = make_job(conn, user_id, credit_cost=amount)
    with Session(engine) as s:
        credits.charge_job(s, job)
    return job


def thresholds(sql: Any, user_id: uuid.UUID) -> tuple[Any, ...]:
    return tuple(
        sql(
            "SELECT alert_below, alert_rearm, alert_spend_above, alert_spend,"
            " alert_spend_until = date_trunc('month', clock_timestamp(), 'UTC')"
            "   + interval '1 month' AS until_next_month"
            " FROM users WHERE id = :u",
            u=user_id,
        )[0]
    )


def events(sql: Any, user_id: uuid.UUID) -> list[tuple[str, int, int]]:
    return [
        tuple(r)
        for r in sql(
            "SELECT kind::text, threshold, value FROM billing_alert_events"
            " WHERE user_id = :u ORDER BY created_at, threshold DESC",
            u=user_id,
        )
    ]


def alert(session: Session, user_id: uuid.UUID, kind: str, threshold: int) -> uuid.UUID:
    a, _ = billing.create_alert(
        session, user_id=user_id, kind=kind, threshold=threshold, webhook_url=HOOK
    )
    session.commit()
    return a.id


def test_a_user_without_alerts_has_no_thresholds(sql):
    user = make_user(sql)
    assert thresholds(sql, user) == (None, None, None, None, None)


def test_the_thresholds_follow_the_alerts_orm_and_raw_sql(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 100)
    charge(engine, user, 7)  # 93; this month's spend 7
    a50 = alert(session, user, "balance_below", 50)
    assert thresholds(sql, user) == (50, None, None, None, None)
    # Raw SQL: an alert inserted by hand moves them too.
    a20 = sql(
        "INSERT INTO billing_alerts (user_id, kind, threshold, webhook_url, secret)"
        " VALUES (:u, 'balance_below', 20, :w, repeat('s', 40)) RETURNING id",
        u=user,
        w=HOOK,
    )[0][0]
    s30 = alert(session, user, "spend_above", 30)
    alert(session, user, "spend_above", 80)
    # The highest armed balance_below, the lowest spend_above; the month's spend counted
    # from the ledger when the first spend_above alert came.
    assert thresholds(sql, user) == (50, None, 30, 7, True)
    assert billing.deactivate_alert(session, user, a50)
    session.commit()
    assert thresholds(sql, user)[:3] == (20, None, 30)
    sql("UPDATE billing_alerts SET threshold = 60 WHERE id = :a", a=a20)
    assert thresholds(sql, user)[:3] == (60, None, 30)
    sql("DELETE FROM billing_alerts WHERE id = :a", a=s30)
    assert thresholds(sql, user)[:3] == (60, None, 80)
    sql("UPDATE billing_alerts SET active = false WHERE user_id = :u", u=user)
    assert thresholds(sql, user) == (None, None, None, None, None)
    sql(
        "UPDATE billing_alerts SET active = true WHERE kind = 'spend_above' AND user_id = :u",
        u=user,
    )
    assert thresholds(sql, user) == (None, None, 80, 7, True)
    # An alert moved to another user moves both users' thresholds.
    other = make_user(sql)
    sql("UPDATE billing_alerts SET user_id = :o WHERE user_id = :u", o=other, u=user)
    assert thresholds(sql, user) == (None, None, None, None, None)
    assert thresholds(sql, other) == (None, None, 80, 0, True)


def test_one_charge_crossing_two_thresholds_fires_both_and_each_rearms_on_its_own(
    engine, sql, session
):
    user = make_user(sql)
    give(engine, user, 100)
    alert(session, user, "balance_below", 50)
    alert(session, user, "balance_below", 20)
    assert thresholds(sql, user)[:2] == (50, None)
    charge(engine, user, 90)  # 10: both crossed
    assert sorted(events(sql, user)) == [("balance_below", 20, 10), ("balance_below", 50, 10)]
    assert thresholds(sql, user)[:2] == (None, 20)
    give(engine, user, 15)  # 25: 20 re-armed, 50 not
    assert thresholds(sql, user)[:2] == (20, 50)
    charge(engine, user, 10)  # 15: 20 fires again, alone
    assert events(sql, user)[-1] == ("balance_below", 20, 15)
    assert len(events(sql, user)) == 3
    give(engine, user, 100)  # 115: both re-armed
    assert thresholds(sql, user)[:2] == (50, None)


def _check_calls(conn: Any) -> int:
    return int(
        conn.execute(
            text(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
                " WHERE funcname = 'billing_alerts_check'"
            )
        ).scalar_one()
    )


def test_the_check_runs_only_for_an_entry_that_crosses(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 1000)
    alert(session, user, "balance_below", 100)
    alert(session, user, "spend_above", 500)
    with engine.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL track_functions = 'all'"))
        for _ in range(5):
            conn.execute(
                text(
                    "INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
                    " VALUES (:u, 'adjustment', -10, 'x', 'tests')"
                ),
                {"u": user},
            )
        assert _check_calls(conn) == 0  # 950: nothing crossed, the check never ran
        for _ in range(3):
            job = make_job(conn, user, credit_cost=200)
            conn.execute(
                text(
                    "INSERT INTO credit_transactions (user_id, type, amount, job_id)"
                    " VALUES (:u, 'consumption', -200, :j)"
                ),
                {"u": user, "j": job},
            )
        # 750 (spend 200), 550 (spend 400), 350 (spend 600 > 500: crossed)
        assert _check_calls(conn) == 1
        conn.execute(
            text(
                "INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
                " VALUES (:u, 'adjustment', -300, 'x', 'tests')"
            ),
            {"u": user},
        )
        assert _check_calls(conn) == 2  # 50 < 100: crossed
    assert events(sql, user) == [("spend_above", 500, 600), ("balance_below", 100, 50)]
    assert thresholds(sql, user) == (None, 100, None, 600, True)


def _as_if_the_month_ended(engine: Engine, user_id: uuid.UUID, spend: int) -> None:
    """The user's state as the last day of last month left it: that month's spend, its
    end already past, and the spend_above alerts fired in that month. The replica
    role skips the triggers (the guard and the sync), as only a test may."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text(
                "UPDATE users SET alert_spend = :s, alert_spend_above = NULL,"
                " alert_spend_until = date_trunc('month', clock_timestamp(), 'UTC')"
                " WHERE id = :u"
            ),
            {"u": user_id, "s": spend},
        )
        conn.execute(
            text(
                "UPDATE billing_alerts SET fired_month ="
                " date_trunc('month', clock_timestamp(), 'UTC') - interval '1 month'"
                " WHERE user_id = :u AND kind = 'spend_above'"
            ),
            {"u": user_id},
        )


def test_spend_above_at_a_month_edge_counts_the_new_month_and_fires_again(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 1000)
    a = alert(session, user, "spend_above", 20)
    charge(engine, user, 11)  # this month: 11
    _as_if_the_month_ended(engine, user, spend=900)
    assert thresholds(sql, user)[2:4] == (None, 900)
    # The first charge after the month's end: the spend is this month's (11 + 11 = 22,
    # not last month's 900 + 11), and the alert fired last month fires again.
    charge(engine, user, 11)
    assert events(sql, user) == [("spend_above", 20, 22)]
    assert thresholds(sql, user)[2:] == (None, 22, True)
    fired = sql("SELECT fired_month FROM billing_alerts WHERE id = :a", a=a)[0][0]
    assert fired == dt.datetime.now(dt.UTC).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    charge(engine, user, 11)  # 33: once a month
    assert len(events(sql, user)) == 1
    assert thresholds(sql, user)[3] == 33


def test_a_purchase_at_a_month_edge_rearms_without_firing(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 1000)
    alert(session, user, "spend_above", 20)
    charge(engine, user, 30)  # 30 > 20: fired this month
    assert len(events(sql, user)) == 1
    _as_if_the_month_ended(engine, user, spend=30)
    give(engine, user, 5)  # no spend: nothing fires, but the new month is taken up
    assert len(events(sql, user)) == 1
    # This month's spend is the ledger's (30, all of it dated this month), the alert
    # re-armed for this month, and it fires on the next charge.
    assert thresholds(sql, user)[2:] == (20, 30, True)
    charge(engine, user, 1)
    assert events(sql, user)[-1] == ("spend_above", 20, 31)


def test_an_alert_fires_once_and_the_spend_adds_up_under_16_concurrent_charges(
    engine, sql, session
):
    user = make_user(sql)
    give(engine, user, 16 * 11 + 5)
    alert(session, user, "balance_below", 100)
    alert(session, user, "spend_above", 90)
    with engine.begin() as conn:
        jobs = [make_job(conn, user, credit_cost=11) for _ in range(16)]
    barrier = threading.Barrier(16)
    failures: list[BaseException] = []

    def run(job_id: uuid.UUID) -> None:
        try:
            with Session(engine) as s:
                barrier.wait(timeout=30)
                credits.charge_job(s, job_id, lock_timeout_ms=30000)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    kinds = sorted(e[0] for e in events(sql, user))
    assert kinds == ["balance_below", "spend_above"]
    ledger_spend = scalar(
        sql,
        "SELECT -sum(amount) FROM credit_transactions WHERE user_id = :u"
        " AND type IN ('consumption', 'refund')",
        u=user,
    )
    assert ledger_spend == 16 * 11
    assert thresholds(sql, user) == (None, 100, None, 16 * 11, True)


@pytest.mark.parametrize(
    "column", ["alert_below", "alert_rearm", "alert_spend_above", "alert_spend"]
)
def test_the_thresholds_are_the_databases_raw_sql_and_orm(engine, sql, session, column):
    user = make_user(sql)
    alert(session, user, "balance_below", 50)  # a balance of 0: created disarmed
    assert thresholds(sql, user) == (None, 50, None, None, None)
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql(f"UPDATE users SET {column} = 1 WHERE id = :u", u=user)
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql(f"INSERT INTO users (email, {column}) VALUES (:e, 1)", e=f"{uuid.uuid4()}@x.test")
    with Session(engine) as s, pytest.raises(errors.DerivedColumnReadOnly):
        s.execute(update(User).where(User.id == user).values({column: 1}))
        s.commit()
    with pytest.raises(errors.DerivedColumnReadOnly):
        sql("UPDATE users SET alert_spend_until = now() WHERE id = :u", u=user)
    assert thresholds(sql, user) == (None, 50, None, None, None)


def test_the_apps_role_moves_thresholds_only_through_alerts(app_engine, engine, sql):
    user = make_user(sql)
    give(engine, user, 100)
    for statement in (
        "UPDATE users SET alert_below = 1 WHERE id = :u",
        "UPDATE users SET alert_spend = 0 WHERE id = :u",
        "SELECT public.billing_alerts_sync(:u)",
        "SELECT public.billing_alerts_check(:u, 0, 1000)",
    ):
        with app_engine.begin() as conn, pytest.raises(errors.PermissionDenied):
            conn.execute(text(statement), {"u": user})
    # What the API does: an alert through database.billing, as the apps' role.
    with Session(app_engine) as s:
        a, _ = billing.create_alert(
            s, user_id=user, kind="balance_below", threshold=50, webhook_url=HOOK
        )
        s.commit()
        assert thresholds(sql, user)[:2] == (50, None)
        with app_engine.begin() as conn:
            job = make_job(conn, user, credit_cost=60)
        credits.charge_job(s, job)
        assert events(sql, user) == [("balance_below", 50, 40)]
        assert billing.deactivate_alert(s, user, a.id)
        s.commit()
    assert thresholds(sql, user) == (None, None, None, None, None)
    assert not events(sql, make_user(sql))


def test_verify_reports_thresholds_that_drifted(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 100)
    alert(session, user, "balance_below", 50)
    alert(session, user, "spend_above", 30)
    charge(engine, user, 60)  # 40: both fired
    give(engine, user, 100)  # 140: re-armed
    assert verify(engine, user_ids=[user]).ok
    assert alert_threshold_drift(engine.connect(), [user]) == []
    with engine.begin() as conn:  # what only a disabled trigger could do
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text("UPDATE users SET alert_below = 7, alert_spend = 1 WHERE id = :u"), {"u": user}
        )
    report = verify(engine, user_ids=[user])
    assert not report.ok
    assert sorted((d.check, d.stored, d.expected) for d in report.drift) == [
        ("alert_below", 7, 50),
        ("alert_spend", 1, 60),
    ]
    assert not any(d.repairable for d in report.drift)
