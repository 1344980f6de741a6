"""database.verify and `automl-db verify [--repair]`.

Drift cannot happen through the triggers, so the tests make it the way a careless
administrator could: with triggers off (``session_replication_role = replica``,
superuser only). Verify must see every kind of it, repair must fix counters and
storage through the logged path, and neither may touch the ledger.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from database import cli, credits, errors
from database import session as db_session
from database.config import get_settings
from database.verify import chain_consistent, verify

from factories import (
    make_dataset,
    make_job,
    make_model,
    make_user,
    make_version,
    make_workflow,
    scalar,
)


def untriggered(engine: Any, *statements: str, **params: Any) -> None:
    """Run statements with every trigger off, as only a superuser can."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            conn.execute(text(statement), params)


def busy_user(sql: Any, session: Any) -> uuid.UUID:
    """A user with some of everything, all of it through the normal paths."""
    user_id = make_user(sql)
    credits.adjust(session, user_id, 100, "opening", "tests")
    job_id = make_job(sql, user_id, credit_cost=30)
    credits.charge_job(session, job_id)
    credits.refund_job(session, job_id, "failed", amount=10)
    dataset_id = make_dataset(sql, user_id)
    make_version(sql, dataset_id, original=1000, parquet=300)
    make_version(sql, dataset_id, original=None, parquet=50)
    make_workflow(sql, user_id)
    make_workflow(sql, user_id, deleted=True)
    make_model(sql, user_id)
    return user_id


def test_a_consistent_database_has_no_drift(sql, session, engine):
    users = [busy_user(sql, session) for _ in range(3)]
    make_user(sql)  # and one with nothing at all
    report = verify(engine)
    assert report.ok, report.render()
    assert report.users_checked == 4
    assert "verified 4 users: no drift" in report.render()
    assert verify(engine, user_ids=users[:1]).users_checked == 1


COUNTER_DRIFT = [
    ("dataset_count", 7),
    ("workflow_count", 2),  # the soft-deleted workflow does not count: 1 is right
    ("model_count", 0),
    ("storage_used_bytes", 99),
]


def test_counter_drift_is_reported_and_repaired(sql, session, engine):
    other = busy_user(sql, session)
    for column, wrong in COUNTER_DRIFT:
        user_id = busy_user(sql, session)
        right = scalar(sql, f"SELECT {column} FROM users WHERE id = :u", u=user_id)
        untriggered(engine, f"UPDATE users SET {column} = :v WHERE id = :u", v=wrong, u=user_id)

        report = verify(engine)
        assert not report.ok and report.users() == [user_id]
        (drift,) = report.drift
        assert (drift.check, drift.stored, drift.expected, drift.repairable) == (
            column,
            wrong,
            right,
            True,
        )
        assert str(user_id) in report.render() and "--repair" in report.render()

        repaired = verify(engine, repair=True)
        assert repaired.ok, repaired.render()
        assert repaired.repaired == [(user_id, column, wrong, right)]
        assert f"{column} {wrong} -> {right}" in repaired.render()
        assert scalar(sql, f"SELECT {column} FROM users WHERE id = :u", u=user_id) == right
        # The guard logged it; nothing else changed, the ledger least of all.
        log = sql(
            "SELECT user_id, column_name, old_value, new_value, repaired_by FROM derived_repairs"
            " WHERE user_id = :u",
            u=user_id,
        )
        assert [tuple(r) for r in log] == [(user_id, column, wrong, right, "postgres")]
    assert verify(engine, user_ids=[other]).ok
    assert scalar(sql, "SELECT count(*) FROM derived_repairs") == len(COUNTER_DRIFT)


def test_balance_drift_is_reported_never_repaired(sql, session, engine):
    user_id = busy_user(sql, session)
    untriggered(engine, "UPDATE users SET credit_balance = 500 WHERE id = :u", u=user_id)
    ledger_before = sql("SELECT id, amount, balance_after FROM credit_transactions ORDER BY id")

    report = verify(engine, repair=True)
    checks = {d.check for d in report.drift}
    assert checks == {"credit_balance", "balance_after"}
    assert not any(d.repairable for d in report.drift) and report.repaired == []
    assert "credit_balance 500 != sum of the ledger 80" in report.render()
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user_id) == 500
    assert sql("SELECT id, amount, balance_after FROM credit_transactions ORDER BY id") == (
        ledger_before
    )
    assert sql("SELECT count(*) FROM derived_repairs")[0][0] == 0


def test_a_broken_balance_after_chain_is_drift(sql, session, engine):
    # The sum agrees with the balance, but one entry's balance_after is wrong.
    user_id = make_user(sql)
    credits.adjust(session, user_id, 100, "opening", "tests")
    untriggered(
        engine,
        "INSERT INTO credit_transactions (user_id, type, amount, balance_after, actor, description)"
        " VALUES (:u, 'adjustment', -30, 80, 'x', 'y')",
        "UPDATE users SET credit_balance = 70 WHERE id = :u",
        u=user_id,
    )
    report = verify(engine)
    assert [d.check for d in report.drift] == ["balance_after"]


def test_entries_out_of_created_at_order_are_not_drift(sql, session, engine):
    # Whatever created_at says (the transaction's start, or the time the entry took
    # the lock), verify accepts any order of the entries that chains: here two
    # transactions interleave for real, and then two entries are dated backwards.
    user_id = make_user(sql)
    credits.adjust(session, user_id, 100, "opening", "tests")
    with engine.connect() as early, engine.connect() as late:
        early.begin()
        early.execute(text("SELECT now()"))  # its transaction starts here
        late.begin()
        late.execute(
            text(
                "INSERT INTO credit_transactions (user_id, type, amount, actor, description)"
                " VALUES (:u, 'adjustment', -40, 'a', 'late')"
            ),
            {"u": user_id},
        )
        late.commit()
        early.execute(
            text(
                "INSERT INTO credit_transactions (user_id, type, amount, actor, description)"
                " VALUES (:u, 'adjustment', 5, 'a', 'early')"
            ),
            {"u": user_id},
        )
        early.commit()
    assert verify(engine).ok

    # 65 -> 55 -> 75, but dated the other way round: the created_at walk breaks,
    # the chain exists.
    untriggered(
        engine,
        "INSERT INTO credit_transactions (user_id, type, amount, balance_after, actor,"
        " description, created_at) VALUES"
        " (:u, 'adjustment', -10, 55, 'a', 'second', now() + interval '2 hours'),"
        " (:u, 'adjustment', 20, 75, 'a', 'third', now() + interval '1 hour')",
        "UPDATE users SET credit_balance = 75 WHERE id = :u",
        u=user_id,
    )
    walk = sql(
        "SELECT balance_after FROM credit_transactions WHERE user_id = :u ORDER BY created_at, id",
        u=user_id,
    )
    assert [r[0] for r in walk][-2:] == [75, 55]
    report = verify(engine)
    assert report.ok, report.render()
    # The same entries with a balance_after that chains nowhere are drift.
    untriggered(
        engine,
        "INSERT INTO credit_transactions (user_id, type, amount, balance_after, actor,"
        " description) VALUES (:u, 'adjustment', 1, 80, 'a', 'bad')",
        "UPDATE users SET credit_balance = 76 WHERE id = :u",
        u=user_id,
    )
    assert [d.check for d in verify(engine).drift] == ["balance_after"]


def test_chain_consistent():
    assert chain_consistent([], 0)
    assert not chain_consistent([], 5)
    assert chain_consistent([(10, 10), (-10, 0), (10, 10)], 10)
    assert chain_consistent([(10, 10), (5, 15), (-5, 10)], 10)  # any order that chains
    assert not chain_consistent([(10, 10)], 0)
    assert not chain_consistent([(10, 10), (-3, 8)], 7)  # 10 -> 8 is not -3 from 10
    # Degrees balance, but a detached loop 50 -> 60 -> 50 is not on the chain.
    assert not chain_consistent([(10, 10), (10, 60), (-10, 50)], 10)
    assert not chain_consistent([(-5, -5)], -5)


def test_the_repair_path_never_writes_the_balance(sql, session, engine):
    user_id = make_user(sql)
    with pytest.raises(errors.DerivedColumnReadOnly), engine.begin() as conn:
        conn.execute(text("SELECT set_config('automl.repair', 'on', true)"))
        conn.execute(text("UPDATE users SET credit_balance = 9 WHERE id = :u"), {"u": user_id})
    assert verify(engine).ok
    # The repair of a consistent user changes and logs nothing.
    assert sql("SELECT * FROM users_repair_derived(:u)", u=user_id) == []
    assert sql("SELECT count(*) FROM derived_repairs")[0][0] == 0


def test_repair_inside_the_callers_transaction(sql, session, engine):
    user_id = busy_user(sql, session)
    untriggered(engine, "UPDATE users SET model_count = 3 WHERE id = :u", u=user_id)
    with engine.connect() as conn:
        with conn.begin():
            report = verify(conn, repair=True)
        assert report.ok and report.repaired == [(user_id, "model_count", 3, 1)]
    assert verify(engine).ok


@pytest.fixture
def cli_db(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    db_session.reset()


def test_cli_verify_exit_codes(sql, session, engine, cli_db, capsys):
    user_id = busy_user(sql, session)
    assert cli.main(["verify"]) == 0
    assert "verified 1 users: no drift" in capsys.readouterr().out

    untriggered(engine, "UPDATE users SET dataset_count = 4 WHERE id = :u", u=user_id)
    assert cli.main(["verify", "--user", str(user_id)]) == 1
    out = capsys.readouterr().out
    assert f"user {user_id}" in out and "dataset_count 4 != 1 datasets" in out

    assert cli.main(["verify", "--repair"]) == 0
    out = capsys.readouterr().out
    assert "dataset_count 4 -> 1" in out and "no drift" in out
