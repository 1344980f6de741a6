"""Faults: a backend killed in the middle of a charge, a user row held locked.

A killed backend must leave no partial ledger entry and the pool must hand out a
working connection on the next call; a lock that is not granted must end in the
retryable LockTimeout, never a hang.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from database import credits, errors
from database.config import get_settings

from factories import make_job, make_user, scalar


def ledger_of(sql: Any, job_id: uuid.UUID) -> int:
    return scalar(sql, "SELECT count(*) FROM credit_transactions WHERE job_id = :j", j=job_id)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    for _ in range(600):
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def lock_waiter(engine: Engine) -> int | None:
    """The pid of a backend of this database waiting for a row lock, if any."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() LIMIT 1"
            )
        ).scalar()


@pytest.fixture
def one_connection(db_url: Any) -> Any:
    """Sessions on a pool of exactly one connection, without pre-ping: after a kill,
    the next call works only if the pool dropped the dead connection itself."""
    eng = errors.install(create_engine(db_url, pool_size=1, max_overflow=0, pool_pre_ping=False))
    yield sessionmaker(bind=eng, expire_on_commit=False)
    eng.dispose()


@pytest.fixture
def funded(sql, session) -> tuple[uuid.UUID, uuid.UUID]:
    user_id = make_user(sql)
    credits.adjust(session, user_id, 100, "opening", "tests")
    return user_id, make_job(sql, user_id, credit_cost=30)


def test_backend_killed_while_the_charge_waits(sql, engine, one_connection, funded):
    session_factory = one_connection
    user_id, job_id = funded
    with engine.connect() as holder:
        holder.begin()
        holder.execute(text("SELECT 1 FROM users WHERE id = :u FOR UPDATE"), {"u": user_id})

        def charge() -> Any:
            with session_factory() as s:
                return credits.charge_job(s, job_id, lock_timeout_ms=60_000)

        thread, out = in_thread(charge)
        pid = wait_for(lambda: lock_waiter(engine), "the charge to wait for the lock")
        with engine.connect() as killer:
            assert killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        thread.join(timeout=30)
        holder.rollback()
    assert not thread.is_alive()
    (result,) = out
    assert isinstance(result, errors.ConnectionLost) and result.retryable, result
    assert ledger_of(sql, job_id) == 0
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user_id) == 100
    # The pool dropped the dead connection: the retry just works.
    with session_factory() as s:
        tx = credits.charge_job(s, job_id)
    assert tx is not None and tx.balance_after == 70 and ledger_of(sql, job_id) == 1


def test_backend_killed_after_the_insert_before_the_commit(sql, engine, one_connection, funded):
    session_factory = one_connection
    user_id, job_id = funded
    with session_factory() as s:
        s.begin()
        tx = credits.charge_job(s, job_id)  # a savepoint in the open transaction
        assert tx is not None and tx.balance_after == 70
        pid = s.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as killer:
            killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises((errors.ConnectionLost, OperationalError)) as info:
            s.commit()
        print("commit after kill raised", type(info.value).__name__)
        s.rollback()
        assert ledger_of(sql, job_id) == 0
        assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user_id) == 100
        # Same session, next call: a fresh connection from the pool.
        again = credits.charge_job(s, job_id)
    assert again is not None and again.balance_after == 70
    assert ledger_of(sql, job_id) == 1


def test_a_locked_user_row_fails_the_charge_within_the_lock_timeout(
    sql, engine, session_factory, funded
):
    user_id, job_id = funded
    with engine.connect() as holder:
        holder.begin()
        holder.execute(text("SELECT 1 FROM users WHERE id = :u FOR UPDATE"), {"u": user_id})

        def charge() -> Any:
            with session_factory() as s:
                return credits.charge_job(s, job_id, lock_timeout_ms=200)

        thread, out = in_thread(charge)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the charge hung"
        (result,) = out
        assert isinstance(result, errors.LockTimeout) and result.retryable, result
        assert ledger_of(sql, job_id) == 0
        holder.rollback()
    with session_factory() as s:  # the retry, once the lock is free
        tx = credits.charge_job(s, job_id, lock_timeout_ms=200)
    assert tx is not None and tx.balance_after == 70


def test_the_default_lock_timeout_comes_from_the_settings(
    sql, engine, session_factory, funded, monkeypatch
):
    user_id, job_id = funded
    monkeypatch.setenv("DB_LOCK_TIMEOUT_MS", "150")
    get_settings.cache_clear()
    try:
        with engine.connect() as holder:
            holder.begin()
            holder.execute(text("SELECT 1 FROM users WHERE id = :u FOR UPDATE"), {"u": user_id})
            thread, out = in_thread(
                lambda: credits.adjust(session_factory(), user_id, 5, "x", "tests")
            )
            thread.join(timeout=30)
            holder.rollback()
        assert not thread.is_alive()
        assert isinstance(out[0], errors.LockTimeout), out
    finally:
        get_settings.cache_clear()
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user_id) == 100
