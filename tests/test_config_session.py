"""Settings (database.config) and engines and sessions (database.session)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import URL, Engine, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from database import config, errors, session
from database.config import DatabaseSettings, InvalidDatabaseURL, normalise_url
from database.models import User

SECRET = "s3cr3t-pa55word"

SETTINGS_ENV = (
    "DATABASE_URL",
    "DB_ECHO",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "DB_POOL_PRE_PING",
    "DB_POOL_PRE_PING_IDLE_S",
    "DB_POOL_TIMEOUT",
    "DB_STATEMENT_TIMEOUT_MS",
    "DB_LOCK_TIMEOUT_MS",
    "AUTOML_DATA_DIR",
    "AUTOML_EMBEDDED_DB",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No setting leaks in from the shell, and no cached engine between tests."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    session.reset()
    config.get_settings.cache_clear()
    yield
    session.reset()
    config.get_settings.cache_clear()


def _url_string(db_url: URL) -> str:
    return db_url.render_as_string(hide_password=False)


def _settings(**values: Any) -> DatabaseSettings:
    return DatabaseSettings(**values)


def _count_users(engine: Engine, email: str) -> int:
    """Through a connection of its own: what other transactions see."""
    with engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM users WHERE email = :e"), {"e": email})


# --- normalise_url --------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "postgres://u:p@h/db",
        "postgresql://u:p@h/db",
        "postgresql+psycopg://u:p@h/db",
        "postgresql+psycopg2://u:p@h/db",
        "  postgres://u:p@h/db\n",
    ],
)
def test_normalise_url_points_at_psycopg3(raw: str) -> None:
    url = normalise_url(raw)
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.database) == ("u", "p", "h", "db")
    assert url.render_as_string(hide_password=False) == "postgresql+psycopg://u:p@h/db"


def test_normalise_url_keeps_port_and_query() -> None:
    url = normalise_url("postgres://u:p@h:6543/db?sslmode=require")
    assert url.port == 6543
    assert url.query == {"sslmode": "require"}


@pytest.mark.parametrize(
    "raw",
    [
        f"mysql://u:{SECRET}@h/db",
        f"sqlite:///tmp/{SECRET}.db",
        "not a url at all",
        "",
        "://nothing",
        f"postgresql://u:{SECRET}@h:notaport/db",
    ],
)
def test_normalise_url_refuses_what_is_not_postgresql(raw: str) -> None:
    with pytest.raises(InvalidDatabaseURL) as raised:
        normalise_url(raw)
    assert isinstance(raised.value, ValueError)
    assert SECRET not in str(raised.value)


# --- DatabaseSettings ------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = DatabaseSettings()
    assert s.database_url is None and s.uses_embedded
    assert (s.pool_size, s.max_overflow, s.pool_pre_ping, s.echo) == (20, 10, True, False)
    assert s.statement_timeout_ms > 0 and s.lock_timeout_ms > 0


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgres://app:{SECRET}@db.internal:5433/automl")
    monkeypatch.setenv("DB_ECHO", "true")
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    monkeypatch.setenv("DB_MAX_OVERFLOW", "3")
    monkeypatch.setenv("DB_POOL_PRE_PING", "false")
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "12345")
    monkeypatch.setenv("DB_LOCK_TIMEOUT_MS", "2345")
    s = DatabaseSettings()
    assert not s.uses_embedded
    assert (s.echo, s.pool_size, s.max_overflow, s.pool_pre_ping) == (True, 7, 3, False)
    assert (s.statement_timeout_ms, s.lock_timeout_ms) == (12345, 2345)
    url = s.url()
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "app",
        SECRET,
        "db.internal",
        5433,
        "automl",
    )
    assert s.connect_options() == "-c statement_timeout=12345 -c lock_timeout=2345"
    # get_settings() reads the same environment (once: it is cached).
    assert config.get_settings().pool_size == 7


@pytest.mark.parametrize(("name", "value"), [("DB_POOL_SIZE", "0"), ("DB_MAX_OVERFLOW", "-1")])
def test_settings_refuse_impossible_pool_sizes(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError):
        DatabaseSettings()


def test_blank_database_url_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "   ")
    assert DatabaseSettings().uses_embedded


def test_password_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{SECRET}@db.internal/automl")
    s = DatabaseSettings()
    for shown in (repr(s), str(s), repr(s.url()), str(s.url()), repr(s.model_dump())):
        assert SECRET not in shown
    # It is there for whoever asks for it explicitly.
    assert s.url().password == SECRET


def test_password_not_shown_when_database_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"mysql://app:{SECRET}@db.internal/automl")
    with pytest.raises(ValueError) as raised:
        DatabaseSettings()
    assert "PostgreSQL" in str(raised.value)
    assert SECRET not in str(raised.value)
    assert SECRET not in repr(raised.value)


# --- make_engine -------------------------------------------------------------------------


def test_make_engine_applies_pool_and_timeouts(db_url: URL) -> None:
    settings = _settings(
        DB_POOL_SIZE=3,
        DB_MAX_OVERFLOW=2,
        DB_POOL_PRE_PING=False,
        DB_STATEMENT_TIMEOUT_MS=12345,
        DB_LOCK_TIMEOUT_MS=2345,
    )
    engine = session.make_engine(db_url, settings)
    try:
        assert engine.pool.size() == 3
        assert engine.pool._max_overflow == 2  # noqa: SLF001
        assert engine.pool._pre_ping is False  # noqa: SLF001
        with engine.connect() as conn:
            assert conn.scalar(text("SHOW statement_timeout")) == "12345ms"
            assert conn.scalar(text("SHOW lock_timeout")) == "2345ms"
    finally:
        engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        pid: int = conn.scalar(text("SELECT pg_backend_pid()"))
    return pid


def _kill_backend(sql: Any, pid: int) -> None:
    sql("SELECT pg_terminate_backend(:pid, 5000)", pid=pid)


@pytest.mark.parametrize("idle_s", [0.0, 0.05])
def test_pre_ping_replaces_a_connection_that_died_in_the_pool(
    db_url: URL, sql: Any, idle_s: float
) -> None:
    """A pooled connection whose server process died while it sat in the pool is
    replaced at checkout, not handed out: with the pool's ping of every checkout
    (idle 0) and with ours after an idle time."""
    engine = session.make_engine(
        db_url, _settings(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_PRE_PING_IDLE_S=idle_s)
    )
    try:
        first = _backend_pid(engine)
        _kill_backend(sql, first)
        if idle_s:
            time.sleep(idle_s * 4)
        second = _backend_pid(engine)  # no error: the dead connection was replaced
        assert second != first
    finally:
        engine.dispose()


def test_pre_ping_skips_a_connection_returned_a_moment_ago(db_url: URL, sql: Any) -> None:
    """What the idle time trades: a connection back in the pool for less than it is
    handed out untested (no round trip), so one killed in between fails its next
    statement; the pool then replaces it (and every older one) for the next caller."""
    engine = session.make_engine(
        db_url, _settings(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_PRE_PING_IDLE_S=3600)
    )
    try:
        first = _backend_pid(engine)
        _kill_backend(sql, first)
        with pytest.raises(errors.ConnectionLost):
            _backend_pid(engine)
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()


def test_make_engine_defaults_from_the_environment(
    db_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", _url_string(db_url))
    monkeypatch.setenv("DB_LOCK_TIMEOUT_MS", "4321")
    engine = session.get_engine()
    assert engine is session.get_engine()  # one pool per process
    assert engine.pool.size() == 20
    assert engine.pool._max_overflow == 10  # noqa: SLF001
    assert engine.pool._pre_ping is True  # noqa: SLF001 - every checkout, by default
    assert config.get_settings().pool_pre_ping_idle_s == 0.0
    with engine.connect() as conn:
        assert conn.scalar(text("SHOW lock_timeout")) == "4321ms"
        assert conn.scalar(text("SELECT current_database()")) == db_url.database


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("UPDATE users SET credit_balance = 500", errors.DerivedColumnReadOnly),
        ("INSERT INTO users (email) VALUES ('dup@example.com')", errors.AlreadyExists),
        ("INSERT INTO users (email) VALUES ('NOT-LOWER@EXAMPLE.COM')", errors.InvalidValue),
        ("INSERT INTO datasets (user_id, name) VALUES (gen_random_uuid(), 'x')",
         errors.ReferenceViolation),
        ("INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
         " SELECT id, 'adjustment', -5, 'test', 'admin' FROM users", errors.InsufficientCredits),
    ],
)  # fmt: skip
def test_make_engine_raises_named_errors(
    db_url: URL, sql: Any, statement: str, expected: type[errors.DatabaseError]
) -> None:
    sql("INSERT INTO users (email) VALUES ('dup@example.com')")
    engine = session.make_engine(db_url, _settings())
    try:
        with pytest.raises(expected) as raised, engine.begin() as conn:
            conn.execute(text(statement))
        assert raised.value.sqlstate
        assert raised.value.retryable is False
    finally:
        engine.dispose()


def test_derived_column_read_only_through_the_orm(db_url: URL) -> None:
    engine = session.make_engine(db_url, _settings())
    factory = session.make_sessionmaker(engine)
    try:
        with factory() as s:
            user = User(email="orm@example.com")
            s.add(user)
            s.commit()
            user.credit_balance = 1000
            with pytest.raises(errors.DerivedColumnReadOnly):
                s.commit()
    finally:
        engine.dispose()


# --- sessions ------------------------------------------------------------------------------


def test_session_scope_commits_on_success(db_url: URL, engine: Engine) -> None:
    app_engine = session.make_engine(db_url, _settings())
    factory = session.make_sessionmaker(app_engine)
    try:
        with session.session_scope(factory) as s:
            assert isinstance(s, Session)
            s.add(User(email="kept@example.com"))
        assert _count_users(engine, "kept@example.com") == 1
    finally:
        app_engine.dispose()


def test_session_scope_rolls_back_on_error(db_url: URL, engine: Engine) -> None:
    app_engine = session.make_engine(db_url, _settings())
    factory = session.make_sessionmaker(app_engine)

    class Boom(Exception):
        pass

    try:
        with pytest.raises(Boom), session.session_scope(factory) as s:
            s.add(User(email="dropped@example.com"))
            s.flush()  # the row exists in this transaction ...
            raise Boom
        assert _count_users(engine, "dropped@example.com") == 0  # ... and nowhere after
        assert app_engine.pool.checkedout() == 0
    finally:
        app_engine.dispose()


def test_session_scope_uses_the_process_factory_by_default(
    db_url: URL, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", _url_string(db_url))
    with session.session_scope() as s:
        s.add(User(email="default@example.com"))
    assert _count_users(engine, "default@example.com") == 1


def test_get_db_yields_a_session_and_closes_it(
    db_url: URL, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", _url_string(db_url))
    gen = session.get_db()
    s = next(gen)
    assert isinstance(s, Session)
    s.add(User(email="uncommitted@example.com"))
    s.flush()
    assert s.in_transaction()
    assert session.get_engine().pool.checkedout() == 1
    with pytest.raises(StopIteration):
        next(gen)  # the request is over
    assert not s.in_transaction()
    assert session.get_engine().pool.checkedout() == 0
    # What the endpoint did not commit is gone.
    assert _count_users(engine, "uncommitted@example.com") == 0


def test_get_db_closes_the_session_when_the_request_fails(
    db_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", _url_string(db_url))
    gen = session.get_db()
    s = next(gen)
    s.execute(text("SELECT 1"))
    with pytest.raises(RuntimeError):
        gen.throw(RuntimeError("handler failed"))
    assert not s.in_transaction()
    assert session.get_engine().pool.checkedout() == 0


# --- asyncio -----------------------------------------------------------------------------


def test_async_engine_and_session_scope(db_url: URL, engine: Engine) -> None:
    settings = _settings(DB_POOL_SIZE=2, DB_LOCK_TIMEOUT_MS=2345)

    async def scenario() -> None:
        async_engine = session.make_async_engine(db_url, settings)
        factory = session.make_async_sessionmaker(async_engine)
        try:
            assert async_engine.sync_engine.pool.size() == 2
            async with async_engine.connect() as conn:
                assert (await conn.execute(text("SHOW lock_timeout"))).scalar() == "2345ms"

            async with session.async_session_scope(factory) as s:
                assert isinstance(s, AsyncSession)
                s.add(User(email="async-kept@example.com"))

            with pytest.raises(ZeroDivisionError):
                async with session.async_session_scope(factory) as s:
                    s.add(User(email="async-dropped@example.com"))
                    await s.flush()
                    1 / 0  # noqa: B018

            async with factory() as s:
                emails = set(
                    (await s.scalars(select(User.email).where(User.email.like("async-%")))).all()
                )
            assert emails == {"async-kept@example.com"}

            # Named errors from the async engine too.
            with pytest.raises(errors.DerivedColumnReadOnly):
                async with session.async_session_scope(factory) as s:
                    await s.execute(text("UPDATE users SET dataset_count = 9"))
        finally:
            await async_engine.dispose()

    asyncio.run(scenario())
    assert _count_users(engine, "async-kept@example.com") == 1
    assert _count_users(engine, "async-dropped@example.com") == 0


def test_get_async_db(db_url: URL, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", _url_string(db_url))

    async def scenario() -> None:
        try:
            gen = session.get_async_db()
            s = await gen.__anext__()
            assert isinstance(s, AsyncSession)
            assert (await s.execute(text("SELECT current_database()"))).scalar() == db_url.database
            with pytest.raises(StopAsyncIteration):
                await gen.__anext__()
            assert not s.in_transaction()
        finally:
            await session.get_async_engine().dispose()

    asyncio.run(scenario())


# --- lock timeout -----------------------------------------------------------------------


def test_lock_timeout_is_raised_as_retryable(db_url: URL, engine: Engine, sql: Any) -> None:
    [(user_id,)] = sql("INSERT INTO users (email) VALUES ('locked@example.com') RETURNING id")
    # A short lock_timeout; a statement_timeout far above it, so only the lock can expire.
    settings = _settings(DB_LOCK_TIMEOUT_MS=50, DB_STATEMENT_TIMEOUT_MS=600_000)
    app_engine = session.make_engine(db_url, settings)
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})
            with pytest.raises(errors.LockTimeout) as raised, app_engine.begin() as conn:
                conn.execute(
                    text("UPDATE users SET full_name = 'waiting' WHERE id = :id"), {"id": user_id}
                )
            holder.rollback()
        assert raised.value.retryable is True
        assert isinstance(raised.value, errors.RetryableError)
        assert raised.value.sqlstate == "55P03"
        # Once the lock is gone, the same transaction succeeds.
        with app_engine.begin() as conn:
            conn.execute(
                text("UPDATE users SET full_name = 'done' WHERE id = :id"), {"id": user_id}
            )
    finally:
        app_engine.dispose()
