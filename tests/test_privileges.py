"""Issue 12, the database part: what the apps' role may no longer do, what the
operator's role may, and the ledger's ON CONFLICT (id) gap closed.

Each privilege test connects as a LOGIN role made for it and granted by
``database.grants.grant`` (local connections are trusted), like test_grants.py.
The rules are tried through raw SQL as that role, and through the package's
functions where the apps call them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from database import cli, credits, errors
from database.grants import grant
from database.models import Model
from database.verify import verify

from factories import (
    make_credit_package,
    make_dataset,
    make_job,
    make_model,
    make_user,
    make_version,
    scalar,
    storage,
)

GUARD_S = 30


def _role(engine: Engine, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
    return name


def _drop(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{name}"'))
        conn.execute(text(f'DROP ROLE "{name}"'))


@pytest.fixture
def operator_engine(db_url: Any, engine: Engine) -> Iterator[Engine]:
    """An engine connected as an operator's role (``automl-db grant --operator ROLE``)."""
    name = _role(engine, "ops")
    with engine.begin() as conn:
        report = grant(conn, name, operator=True)
    assert report.operator
    eng = errors.install(create_engine(db_url.set(username=name), pool_size=2))
    yield eng
    eng.dispose()
    _drop(engine, name)


def run_as(eng: Engine, statement: str, **params: Any) -> list[Any]:
    with eng.begin() as conn:
        result = conn.execute(text(statement), params)
        return list(result) if result.returns_rows else []


def ledger_state(sql: Any) -> tuple[Any, ...]:
    return (
        sql("SELECT id, credit_balance, tier::text FROM users ORDER BY id"),
        sql("SELECT id, amount FROM credit_transactions ORDER BY id"),
        sql("SELECT id, credits, price_cents, is_active FROM credit_packages ORDER BY id"),
    )


# =====================================================================================
# the apps' role makes neither money nor room
# =====================================================================================
def test_the_apps_role_cannot_make_credits(sql, engine, app_engine):
    user_id = make_user(sql)
    package_id = make_credit_package(sql, credits=100)
    with Session(engine, expire_on_commit=False) as s:  # the owner
        credits.adjust(s, user_id, 10, "opening", "tests")
    before = ledger_state(sql)
    cases: list[tuple[str, dict[str, Any], type[errors.DatabaseError]]] = [
        # The report's statement: a purchase of nothing, paid by nobody.
        (
            "INSERT INTO credit_transactions (user_id, type, amount)"
            " VALUES (:u, 'purchase', 1000000)",
            {},
            errors.PurchaseUnpaid,
        ),
        (
            "INSERT INTO credit_transactions (user_id, type, amount, stripe_payment_id)"
            " VALUES (:u, 'purchase', 1000000, 'pi_made_up')",
            {},
            errors.PurchaseUnpaid,
        ),
        (
            "INSERT INTO credit_transactions (user_id, type, amount, package_id)"
            " VALUES (:u, 'purchase', 100, :p)",
            {},
            errors.PurchaseUnpaid,
        ),
        (
            "INSERT INTO credit_transactions (user_id, type, amount, package_id,"
            " stripe_payment_id) VALUES (:u, 'purchase', 100, :p, '  ')",
            {},
            errors.PurchaseUnpaid,
        ),
        # A package names its credits: no more.
        (
            "INSERT INTO credit_transactions (user_id, type, amount, package_id,"
            " stripe_payment_id) VALUES (:u, 'purchase', 1000000, :p, 'pi_x')",
            {},
            errors.PurchaseAmountMismatch,
        ),
        # Adjustments, adding or taking, are an operator's.
        (
            "INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
            " VALUES (:u, 'adjustment', 1000000, 'gift', 'me')",
            {},
            errors.AdjustmentNotAllowed,
        ),
        (
            "INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
            " VALUES (:u, 'adjustment', -5, 'fee', 'me')",
            {},
            errors.AdjustmentNotAllowed,
        ),
        (
            "SELECT * FROM public.credit_adjust(:u, 1000000, 'gift', 'me', NULL)",
            {},
            errors.PermissionDenied,
        ),
        ("UPDATE credit_packages SET credits = 1000000", {}, errors.PermissionDenied),
        ("UPDATE credit_packages SET is_active = true", {}, errors.PermissionDenied),
        ("UPDATE users SET tier = 'enterprise' WHERE id = :u", {}, errors.PermissionDenied),
    ]
    for statement, extra, expected in cases:
        with pytest.raises(expected) as info:
            run_as(app_engine, statement, u=user_id, p=package_id, **extra)
        assert type(info.value) is expected, (statement, info.value)
    with pytest.raises(errors.PurchaseUnpaid) as unpaid:
        run_as(app_engine, cases[0][0], u=user_id)
    assert unpaid.value.sqlstate == "ML020"
    with pytest.raises(errors.AdjustmentNotAllowed) as adjust:
        run_as(app_engine, cases[5][0], u=user_id)
    assert adjust.value.sqlstate == "ML021"
    # The package's function too: adjust is an operator's call.
    with Session(app_engine, expire_on_commit=False) as s, pytest.raises(errors.PermissionDenied):
        credits.adjust(s, user_id, 5, "gift", "me")
    assert ledger_state(sql) == before
    assert verify(engine).ok


def test_the_apps_role_still_sells_credits(sql, app_engine):
    """The dev purchase's and the Stripe webhook's path: a package and a reference."""
    user_id = make_user(sql)
    package_id = make_credit_package(sql, credits=100)
    with Session(app_engine, expire_on_commit=False) as s:
        assert credits.purchase(s, user_id, package_id, "pi_3Nstripe").balance_after == 100
        ref = f"dev:{user_id}:{uuid.uuid4()}"
        assert credits.purchase(s, user_id, package_id, ref).balance_after == 200
    entries = sql(
        "SELECT package_id, stripe_payment_id FROM credit_transactions WHERE user_id = :u"
        " ORDER BY created_at",
        u=user_id,
    )
    assert [tuple(e) for e in entries] == [(package_id, "pi_3Nstripe"), (package_id, ref)]


def test_owner_and_operator_adjust(sql, engine, operator_engine):
    user_id = make_user(sql)
    package_id = make_credit_package(sql, credits=100)
    # The owner (the migrator): directly, as before.
    with Session(engine, expire_on_commit=False) as s:
        assert credits.adjust(s, user_id, 50, "opening", "tests").balance_after == 50
    with Session(operator_engine, expire_on_commit=False) as s:
        entry = credits.adjust(s, user_id, 25, "goodwill", "ops:ada", idempotency_key="t-1")
        assert (entry.balance_after, entry.actor, entry.amount) == (75, "ops:ada", 25)
        again = credits.adjust(s, user_id, 25, "goodwill", "ops:ada", idempotency_key="t-1")
        assert again.id == entry.id  # a retry adjusts once
        assert credits.adjust(s, user_id, -5, "claw back", "ops:ada").balance_after == 70
    [(balance,)] = run_as(
        operator_engine,
        "SELECT balance_after FROM public.credit_adjust(:u, 30, 'psql', 'ops:bob', NULL)",
        u=user_id,
    )
    assert balance == 100
    # The operator's way is the function: a raw adjustment is refused like the apps'.
    with pytest.raises(errors.PermissionDenied):
        run_as(
            operator_engine,
            "INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
            " VALUES (:u, 'adjustment', 5, 'x', 'y')",
            u=user_id,
        )
    # The actor is required, through the function too.
    with pytest.raises(errors.InvalidValue):
        run_as(
            operator_engine,
            "SELECT * FROM public.credit_adjust(:u, 5, 'no actor', NULL, NULL)",
            u=user_id,
        )
    # Packages, prices and tiers are the operator's.
    run_as(operator_engine, "UPDATE credit_packages SET credits = 120, price_cents = 1299")
    run_as(
        operator_engine,
        "INSERT INTO credit_packages (name, credits, price_cents) VALUES ('big', 1000, 9999)",
    )
    run_as(operator_engine, "UPDATE users SET tier = 'pro' WHERE id = :u", u=user_id)
    assert scalar(sql, "SELECT tier::text FROM users WHERE id = :u", u=user_id) == "pro"
    assert scalar(sql, "SELECT credits FROM credit_packages WHERE id = :p", p=package_id) == 120
    # ... and nothing of the apps' work.
    for statement in (
        "INSERT INTO credit_transactions (user_id, type, amount, package_id, stripe_payment_id)"
        " VALUES (:u, 'purchase', 120, :p, 'pi_ops')",
        "UPDATE users SET full_name = 'x' WHERE id = :u",
        "UPDATE users SET credit_balance = 0 WHERE id = :u",
        "INSERT INTO datasets (user_id, name) VALUES (:u, 'd')",
        "SELECT * FROM public.users_repair_derived(:u)",
    ):
        with pytest.raises(errors.PermissionDenied):
            run_as(operator_engine, statement, u=user_id, p=package_id)
    assert verify(operator_engine).ok
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user_id) == 100


def test_grant_operator_is_exact(sql, engine):
    name = _role(engine, "ops")
    try:
        with engine.begin() as conn:
            grant(conn, name)  # the apps' privileges first: the operator's replace them
            grant(conn, name, operator=True)

        def table(privilege: str, t: str) -> bool:
            return scalar(sql, "SELECT has_table_privilege(:r, :t, :p)", r=name, t=t, p=privilege)

        def column(privilege: str, t: str, c: str) -> bool:
            return scalar(
                sql,
                "SELECT has_column_privilege(:r, :t, :c, :p)",
                r=name,
                t=t,
                c=c,
                p=privilege,
            )

        assert [table(p, "credit_packages") for p in ("SELECT", "INSERT", "UPDATE", "DELETE")] == [
            True
        ] * 4
        assert [table(p, "credit_transactions") for p in ("SELECT", "INSERT")] == [True, False]
        assert [table(p, "datasets") for p in ("SELECT", "INSERT", "UPDATE", "DELETE")] == [
            True,
            False,
            False,
            False,
        ]
        assert column("UPDATE", "users", "tier") and not column("UPDATE", "users", "email")
        assert not column("UPDATE", "users", "credit_balance")
        assert scalar(
            sql,
            "SELECT has_function_privilege(:r,"
            " 'public.credit_adjust(uuid, integer, text, text, text)', 'EXECUTE')",
            r=name,
        )
    finally:
        _drop(engine, name)


def test_grant_apps_role_reads_packages_and_tiers(sql, engine):
    name = _role(engine, "app")
    try:
        with engine.begin() as conn:
            grant(conn, name)

        def column(privilege: str, t: str, c: str) -> bool:
            return scalar(
                sql,
                "SELECT has_column_privilege(:r, :t, :c, :p)",
                r=name,
                t=t,
                c=c,
                p=privilege,
            )

        for privilege in ("INSERT", "UPDATE"):
            assert not column(privilege, "users", "tier")
            assert not column(privilege, "credit_packages", "credits")
            assert not column(privilege, "credit_packages", "price_cents")
        assert column("SELECT", "credit_packages", "credits") and column("UPDATE", "users", "email")
        assert not scalar(
            sql,
            "SELECT has_function_privilege(:r,"
            " 'public.credit_adjust(uuid, integer, text, text, text)', 'EXECUTE')",
            r=name,
        )
    finally:
        _drop(engine, name)


def test_cli_grant_operator(sql, engine, db_url, monkeypatch, capsys):
    from database import session as db_session
    from database.config import get_settings

    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    name = f"ops_{uuid.uuid4().hex[:10]}"
    try:
        assert cli.main(["grant", "--operator", name, "--create"]) == 0
        out = capsys.readouterr().out
        assert f"role {name} (operator, created)" in out and "credit_adjust" in out
    finally:
        get_settings.cache_clear()
        db_session.reset()
        with engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{name}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))


# =====================================================================================
# sizes are written once; model bytes count
# =====================================================================================
def test_sizes_are_written_once(sql, app_engine):
    user_id = make_user(sql)
    dataset_id = make_dataset(sql, user_id)
    version = make_version(sql, dataset_id, original=1000)
    model = make_model(sql, user_id, size_bytes=500)
    assert storage(sql, user_id) == 1500
    # The worker's ingestion records the Parquet size once (NULL -> a value), as the
    # apps' role.
    run_as(
        app_engine,
        "UPDATE dataset_versions SET parquet_size_bytes = 300, status = 'completed' WHERE id = :v",
        v=version,
    )
    assert storage(sql, user_id) == 1800
    before = sql("SELECT * FROM dataset_versions ORDER BY id"), storage(sql, user_id)
    for statement in (
        "UPDATE dataset_versions SET original_size_bytes = 0",  # the report's statement
        "UPDATE dataset_versions SET original_size_bytes = NULL",
        "UPDATE dataset_versions SET parquet_size_bytes = 1",
        "UPDATE dataset_versions SET parquet_size_bytes = NULL, status = 'failed'",
        "UPDATE dataset_versions SET original_size_bytes = original_size_bytes * 2",
        "UPDATE models SET size_bytes = 0",
        "UPDATE models SET size_bytes = NULL",
    ):
        for eng in (app_engine, None):  # the apps' role, and the owner too
            with pytest.raises(errors.SizeReadOnly) as info:
                if eng is None:
                    sql(statement)
                else:
                    run_as(eng, statement)
            assert info.value.sqlstate == "ML022", statement
    assert (sql("SELECT * FROM dataset_versions ORDER BY id"), storage(sql, user_id)) == before
    # Setting a size to the value it has is no change; other columns stay writable.
    run_as(app_engine, "UPDATE dataset_versions SET original_size_bytes = 1000, row_count = 3")
    run_as(
        app_engine, "UPDATE models SET size_bytes = 500, name = 'renamed' WHERE id = :m", m=model
    )
    assert storage(sql, user_id) == 1800
    assert verify(app_engine).ok


def test_sizes_are_written_once_through_the_orm(sql, session):
    from database.models import DatasetVersion

    user_id = make_user(sql)
    version = session.get(DatasetVersion, make_version(sql, make_dataset(sql, user_id), original=7))
    assert version is not None
    version.original_size_bytes = 0
    with pytest.raises(errors.SizeReadOnly):
        session.commit()
    session.rollback()
    model = session.get(Model, make_model(sql, user_id, size_bytes=9))
    assert model is not None
    model.size_bytes = 1
    with pytest.raises(errors.SizeReadOnly):
        session.commit()
    session.rollback()
    assert storage(sql, user_id) == 16


def test_model_bytes_count_in_storage(sql, session, app_engine):
    user_id = make_user(sql)
    job = make_job(sql, user_id)
    # Raw SQL, as the worker's save node writes it (as the apps' role).
    first = run_as(
        app_engine,
        "INSERT INTO models (user_id, job_id, name, algorithm, problem_type, s3_path, size_bytes)"
        " VALUES (:u, :j, 'm', 'random_forest', 'classification', '/x.joblib', 4096)"
        " RETURNING id",
        u=user_id,
        j=job,
    )[0][0]
    assert storage(sql, user_id) == 4096
    # A bulk insert (one statement, several rows) and a model without a size.
    run_as(
        app_engine,
        "INSERT INTO models (user_id, name, algorithm, problem_type, size_bytes)"
        " SELECT :u, 'm' || g, 'ridge', 'regression', CASE WHEN g = 3 THEN NULL ELSE 10 END"
        " FROM generate_series(1, 3) AS g",
        u=user_id,
    )
    assert storage(sql, user_id) == 4116
    # The ORM.
    model = Model(
        user_id=user_id,
        name="orm",
        algorithm="ridge",
        problem_type="regression",
        size_bytes=1000,
    )
    session.add(model)
    session.commit()
    assert storage(sql, user_id) == 5116
    session.delete(model)
    session.commit()
    assert storage(sql, user_id) == 4116
    run_as(app_engine, "DELETE FROM models WHERE id = :m", m=first)
    assert storage(sql, user_id) == 20
    # Models and versions together; deleting the user's models leaves the versions.
    make_version(sql, make_dataset(sql, user_id), original=100, parquet=50)
    assert storage(sql, user_id) == 170
    run_as(app_engine, "DELETE FROM models WHERE user_id = :u", u=user_id)
    assert storage(sql, user_id) == 150
    assert verify(app_engine).ok


def test_verify_repairs_model_bytes(sql, engine):
    user_id = make_user(sql)
    make_model(sql, user_id, size_bytes=300)
    # Drift: a model written with its storage trigger off (the owner can).
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE models DISABLE TRIGGER users_adjust_model_storage_insert"))
        make_model(conn, user_id, size_bytes=700)
        conn.execute(text("ALTER TABLE models ENABLE TRIGGER users_adjust_model_storage_insert"))
    assert storage(sql, user_id) == 300
    report = verify(engine)
    [drift] = report.drift
    assert (drift.check, drift.stored, drift.expected) == ("storage_used_bytes", 300, 1000)
    assert "models" in report.render()
    repaired = verify(engine, repair=True)
    assert repaired.ok and repaired.repaired == [(user_id, "storage_used_bytes", 300, 1000)]
    assert storage(sql, user_id) == 1000


# =====================================================================================
# verify: entries no rule could have produced
# =====================================================================================
def test_verify_reports_entries_no_rule_could_produce(sql, engine, capsys):
    user_id = make_user(sql)
    package_id = make_credit_package(sql, credits=100)
    with Session(engine, expire_on_commit=False) as s:
        credits.purchase(s, user_id, package_id, "pi_fine")
        credits.adjust(s, user_id, 5, "fine", "tests")
    assert verify(engine).ok
    # Rows from before the rules: written here with the rules switched off.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE credit_transactions DISABLE TRIGGER credit_purchase_rules"))
        conn.execute(
            text(
                "INSERT INTO credit_transactions (user_id, type, amount)"
                " VALUES (:u, 'purchase', 1000000)"
            ),
            {"u": user_id},
        )
        conn.execute(
            text(
                "INSERT INTO credit_transactions (user_id, type, amount, package_id)"
                " VALUES (:u, 'purchase', 100, :p)"
            ),
            {"u": user_id, "p": package_id},
        )
        conn.execute(text("ALTER TABLE credit_transactions ENABLE TRIGGER credit_purchase_rules"))
        conn.execute(
            text(
                "ALTER TABLE credit_transactions"
                " DROP CONSTRAINT ck_credit_transactions_adjustment_has_actor_and_reason"
            )
        )
        conn.execute(
            text(
                "INSERT INTO credit_transactions (user_id, type, amount, description)"
                " VALUES (:u, 'adjustment', 7, 'who?')"
            ),
            {"u": user_id},
        )
    report = verify(engine)
    assert not report.drift  # the balance follows the ledger: no drift, yet not ok
    assert not report.ok
    assert sorted(u.problem for u in report.unproduced) == [
        "a purchase without a package",
        "a purchase without a payment reference",
        "an adjustment without an actor",
    ]
    assert {u.user_id for u in report.unproduced} == {user_id}
    rendered = report.render()
    assert "3 ledger entries no rule could have produced" in rendered
    assert "purchase of 1000000" in rendered
    assert [u.type for u in verify(engine, user_ids=[make_user(sql)]).unproduced] == []


# =====================================================================================
# the ON CONFLICT (id) gap
# =====================================================================================
def _wait_until_waiting(sql: Any, pid: int) -> None:
    for _ in range(GUARD_S * 20):
        if scalar(sql, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p", p=pid) == (
            "Lock"
        ):
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"backend {pid} never waited on a lock")


@pytest.mark.parametrize("second_user", [False, True], ids=["same user", "another user"])
@pytest.mark.parametrize("kind", ["consumption", "adjustment"])
def test_concurrent_on_conflict_id_do_nothing_moves_no_credits(sql, engine, second_user, kind):
    """Two transactions insert one new id with ON CONFLICT (id) DO NOTHING: the second
    waits for the first, then skips its row, and its balance must not move."""
    users = [make_user(sql), make_user(sql)]
    with Session(engine, expire_on_commit=False) as s:
        for u in users:
            credits.adjust(s, u, 100, "opening", "tests")
    entry_id = uuid.uuid4()
    statement = text(
        "INSERT INTO credit_transactions (id, user_id, type, amount, job_id, description, actor)"
        " VALUES (:id, :u, CAST(:t AS transaction_type), :a, :j, :d, :actor)"
        " ON CONFLICT (id) DO NOTHING RETURNING balance_after"
    )

    def params(user: uuid.UUID) -> dict[str, Any]:
        if kind == "consumption":
            return {"id": entry_id, "u": user, "t": kind, "a": -10, "j": make_job(sql, user)}
        return {"id": entry_id, "u": user, "t": kind, "a": -10, "d": "fee", "actor": "ops"}

    first_params = params(users[0])
    second_params = params(users[1] if second_user else users[0])
    for p in (first_params, second_params):
        p.setdefault("j", None)
        p.setdefault("d", None)
        p.setdefault("actor", None)
    result: dict[str, Any] = {}
    with engine.connect() as first, engine.connect() as second:
        second_pid = second.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        second.rollback()
        first.begin()
        assert first.execute(statement, first_params).scalar_one() == 90

        def run_second() -> None:
            try:
                with second.begin():
                    result["rows"] = second.execute(statement, second_params).all()
            except errors.DatabaseError as exc:  # refused: as good as skipped
                result["error"] = exc

        thread = threading.Thread(target=run_second)
        thread.start()
        _wait_until_waiting(sql, second_pid)
        first.commit()
        thread.join(GUARD_S)
        assert not thread.is_alive()
    assert result.get("rows", []) == []  # skipped (or refused): never applied
    for u in users:
        balance, total, n = sql(
            "SELECT u.credit_balance, (SELECT sum(t.amount) FROM credit_transactions t"
            " WHERE t.user_id = u.id), (SELECT count(*) FROM credit_transactions t"
            " WHERE t.user_id = u.id) FROM users u WHERE u.id = :u",
            u=u,
        )[0]
        assert balance == total, f"balance {balance} != ledger sum {total}"
    assert scalar(sql, "SELECT count(*) FROM credit_transactions WHERE id = :i", i=entry_id) == 1
    assert verify(engine).ok
