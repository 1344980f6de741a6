"""`automl-db grant ROLE`: the applications' role can do its work and nothing more.

Each test creates a LOGIN role on the test server (local connections are trusted),
grants it, and connects as it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import sessionmaker

from database import cli, credits, errors, lifecycle
from database import session as db_session
from database.config import get_settings
from database.grants import grant
from database.verify import verify

from factories import make_credit_package, make_dataset, make_job, make_user, make_version, scalar


@pytest.fixture
def role(engine: Engine) -> Iterator[str]:
    name = f"app_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
    yield name
    with engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{name}"'))
        conn.execute(text(f'DROP ROLE "{name}"'))


@pytest.fixture
def app_role(engine: Engine, role: str) -> str:
    """``role`` granted the apps' privileges (conftest's ``app_engine`` connects as it)."""
    with engine.begin() as conn:
        grant(conn, role)
    return role


def as_app(app_engine: Engine, statement: str, **params: Any) -> list[Any]:
    with app_engine.begin() as conn:
        result = conn.execute(text(statement), params)
        return list(result) if result.returns_rows else []


def test_the_app_role_does_the_apps_work(sql, engine, app_engine, tmp_path):
    user_id = make_user(sql)
    package_id = make_credit_package(sql, credits=100)
    job_id = make_job(sql, user_id, credit_cost=30)
    other_job = make_job(sql, user_id, credit_cost=10)
    app = sessionmaker(bind=app_engine, expire_on_commit=False)
    with app() as s:
        assert as_app(app_engine, "SELECT current_user")[0][0] != "postgres"
        assert credits.purchase(s, user_id, package_id, "pi_app").balance_after == 100
        assert credits.charge_job(s, job_id).balance_after == 70  # type: ignore[union-attr]
        assert credits.refund_job(s, job_id, "failed").balance_after == 100
        credits.charge_job(s, other_job)
    # Adjustments are an operator's (test_privileges): the owner makes this one.
    with sessionmaker(bind=engine)() as s:
        assert credits.adjust(s, user_id, -5, "fee", "support").balance_after == 85
    # Plain data access, with the counters still maintained by the triggers.
    dataset = as_app(
        app_engine,
        "INSERT INTO datasets (user_id, name) VALUES (:u, 'iris') RETURNING id",
        u=user_id,
    )[0][0]
    as_app(
        app_engine,
        "INSERT INTO dataset_versions (dataset_id, user_id, original_size_bytes)"
        " VALUES (:d, :u, 42)",
        d=dataset,
        u=user_id,
    )
    as_app(app_engine, "UPDATE users SET full_name = 'Grace' WHERE id = :u", u=user_id)
    as_app(app_engine, "INSERT INTO users (email) VALUES ('new@example.com')")
    row = sql(
        "SELECT credit_balance, dataset_count, storage_used_bytes FROM users WHERE id = :u",
        u=user_id,
    )[0]
    assert tuple(row) == (85, 1, 42)
    # verify reads; lifecycle and purge run as the app role too.
    assert verify(app_engine).ok
    with app() as s:
        lifecycle.soft_delete_user(s, user_id, at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    report = lifecycle.purge(app_engine, remove_file=lambda _: False)
    assert report.users_purged == 1
    assert verify(app_engine).ok


FORBIDDEN = [
    "UPDATE credit_transactions SET amount = 1000",
    "DELETE FROM credit_transactions",
    "TRUNCATE credit_transactions",
    "UPDATE users SET credit_balance = 1000",
    "UPDATE users SET dataset_count = 0, storage_used_bytes = 0",
    "INSERT INTO users (email, credit_balance) VALUES ('rich@example.com', 1000)",
    "INSERT INTO users (email, tier) VALUES ('vip@example.com', 'enterprise')",
    "UPDATE users SET tier = 'enterprise'",
    "UPDATE credit_packages SET credits = 1000000",
    "UPDATE credit_packages SET price_cents = 0",
    "INSERT INTO credit_packages (name, credits, price_cents) VALUES ('free money', 10000, 0)",
    "DELETE FROM credit_packages",
    "SELECT * FROM public.credit_adjust((SELECT id FROM users LIMIT 1), 1000000, 'x', 'y', NULL)",
    "DELETE FROM users",
    "ALTER TABLE credit_transactions DISABLE TRIGGER credit_tx_no_update_delete",
    "ALTER TABLE users DISABLE TRIGGER ALL",
    "SET session_replication_role = replica",
    "SELECT public.users_apply_deltas('dataset_count', ARRAY[gen_random_uuid()], ARRAY[5::bigint])",
    "SELECT * FROM public.users_repair_derived(gen_random_uuid())",
    "INSERT INTO derived_repairs (user_id, column_name, old_value, new_value)"
    " SELECT id, 'x', 0, 0 FROM users",
    "CREATE TABLE public.mine (x int)",
    "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "DROP TABLE jobs",
]


def test_the_app_role_cannot(sql, session, app_engine):
    user_id = make_user(sql)
    credits.charge_job(session, make_job(sql, user_id, credit_cost=0))
    credits.adjust(session, user_id, 50, "opening", "tests")
    make_version(sql, make_dataset(sql, user_id), original=10)
    state = "SELECT id, credit_balance, dataset_count, storage_used_bytes FROM users ORDER BY id"
    before = (sql(state), sql("SELECT * FROM credit_transactions ORDER BY id"))
    allowed = []
    for statement in FORBIDDEN:
        try:
            with app_engine.begin() as conn:
                # The repair flag grants nothing without the column privilege.
                conn.execute(text("SELECT set_config('automl.repair', 'on', true)"))
                conn.execute(text(statement))
        except errors.PermissionDenied:
            continue
        allowed.append(statement)
    assert allowed == []
    assert (sql(state), sql("SELECT * FROM credit_transactions ORDER BY id")) == before


def test_grant_is_exact_and_idempotent(sql, engine, role):
    with engine.begin() as conn:
        conn.execute(text(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"'))
        conn.execute(text(f'GRANT CREATE ON SCHEMA public TO "{role}"'))
        report = grant(conn, role)
        grant(conn, role)
    assert not report.created and any("credit_transactions" in s for s in report.statements)

    def can(privilege: str, table: str) -> bool:
        return scalar(sql, "SELECT has_table_privilege(:r, :t, :p)", r=role, t=table, p=privilege)

    assert [
        can(p, "credit_transactions")
        for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER")
    ] == [True, True, False, False, False, False]
    assert [can(p, "datasets") for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")] == [
        True,
        True,
        True,
        True,
        False,
    ]
    assert [can(p, "derived_repairs") for p in ("SELECT", "INSERT", "UPDATE")] == [
        True,
        False,
        False,
    ]
    assert not can("DELETE", "users") and not can("UPDATE", "users")  # column-level only

    def column(privilege: str, name: str) -> bool:
        return scalar(
            sql, "SELECT has_column_privilege(:r, 'users', :c, :p)", r=role, c=name, p=privilege
        )

    for derived in (
        "credit_balance",
        "dataset_count",
        "workflow_count",
        "model_count",
        "storage_used_bytes",
    ):
        assert not column("UPDATE", derived) and not column("INSERT", derived)
    assert column("UPDATE", "email") and column("UPDATE", "purged_at")
    assert not column("UPDATE", "id") and column("INSERT", "id")
    assert not scalar(sql, "SELECT has_schema_privilege(:r, 'public', 'CREATE')", r=role)
    for fn in (
        "public.users_apply_deltas(text, uuid[], bigint[])",
        "public.users_repair_derived(uuid)",
        "public.credit_tx_before_insert()",
    ):
        assert not scalar(sql, "SELECT has_function_privilege(:r, :f, 'EXECUTE')", r=role, f=fn)
    owned = scalar(
        sql, "SELECT count(*) FROM pg_class WHERE relowner = CAST(:r AS regrole)", r=role
    )
    assert owned == 0


def test_the_migration_already_revokes_the_callable_functions(sql):
    for fn in (
        "public.users_apply_deltas(text, uuid[], bigint[])",
        "public.users_repair_derived(uuid)",
    ):
        acl = scalar(
            sql, "SELECT proacl::text FROM pg_proc WHERE oid = CAST(:f AS regprocedure)", f=fn
        )
        # An entry "=X/owner" (empty grantee) would be EXECUTE for PUBLIC.
        assert acl is not None and not any(e.startswith("=") for e in acl.strip("{}").split(","))


def test_grant_refusals(sql, engine):
    with engine.begin() as conn, pytest.raises(errors.UnsafeRole, match="superuser"):
        grant(conn, "postgres")
    with engine.begin() as conn, pytest.raises(errors.RoleNotFound):
        grant(conn, f"nobody_{uuid.uuid4().hex[:8]}")
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE ROLE "{owner}"'))
            conn.execute(text(f'ALTER TABLE tutorials OWNER TO "{owner}"'))
        with engine.begin() as conn, pytest.raises(errors.UnsafeRole, match="tutorials"):
            grant(conn, owner)
    finally:
        with engine.begin() as conn:
            conn.execute(text('ALTER TABLE tutorials OWNER TO "postgres"'))
            conn.execute(text(f'DROP OWNED BY "{owner}"'))
            conn.execute(text(f'DROP ROLE "{owner}"'))


@pytest.fixture
def cli_db(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    db_session.reset()


def test_cli_grant(sql, engine, cli_db, capsys):
    name = f"app_{uuid.uuid4().hex[:10]}"
    try:
        assert cli.main(["grant", name]) == 1
        assert "--create" in capsys.readouterr().err
        assert cli.main(["grant", name, "--create"]) == 0
        out = capsys.readouterr().out
        assert f"role {name} (apps, created)" in out and "GRANT SELECT, INSERT ON" in out
        assert scalar(sql, "SELECT rolcanlogin FROM pg_roles WHERE rolname = :r", r=name)
        assert cli.main(["grant", "postgres"]) == 1
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{name}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
