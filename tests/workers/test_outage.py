"""``workers.outage``: what counts as a lost database (real errors from a real
server), the backoff's sequence, and one log line per change of state."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from database import errors
from database.session import make_engine
from workers.outage import Backoff, DatabaseLink, describe, is_outage


def _raised(engine: Engine, statement: str) -> BaseException:
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    except Exception as exc:
        return exc
    raise AssertionError("the statement did not fail")


def test_an_unreachable_server_is_an_outage_a_refusal_is_not(db_url: URL, engine: Engine) -> None:
    nowhere = make_engine(db_url.set(query={"host": f"/tmp/no-server-{uuid.uuid4().hex[:6]}"}))
    try:
        unreachable = _raised(nowhere, "SELECT 1")
    finally:
        nowhere.dispose()
    assert is_outage(unreachable)
    assert "no-server" in describe(unreachable)

    timeout = _raised(engine, "SET statement_timeout = 50; SELECT pg_sleep(5)")
    assert isinstance(timeout, errors.StatementTimeout) and not is_outage(timeout)
    refused = _raised(engine, "SELECT 1/0")
    assert not is_outage(refused)
    missing = _raised(engine, "SELECT * FROM no_such_table")
    assert not is_outage(missing)


def test_a_terminated_session_is_an_outage(engine: Engine) -> None:
    with engine.connect() as victim:
        pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as killer:
            killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(Exception) as info:
            victim.execute(text("SELECT 1"))
    assert isinstance(info.value, errors.ConnectionLost) and is_outage(info.value)


def test_backoff_doubles_up_to_its_cap_with_a_little_jitter_and_resets() -> None:
    backoff = Backoff(initial=0.5, cap=30, jitter=0.1)
    delays = [backoff.next() for _ in range(9)]
    nominal = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert all(n * 0.9 <= d <= n for d, n in zip(delays, nominal, strict=True)), delays
    backoff.reset()
    assert backoff.next() <= 0.5
    with pytest.raises(ValueError):
        Backoff(initial=0)


def test_one_line_when_lost_one_when_back(caplog: pytest.LogCaptureFixture) -> None:
    link = DatabaseLink(logging.getLogger("test.outage"), cap=30)
    lost = OSError("connection refused")
    caplog.set_level(logging.WARNING, logger="test.outage")
    for doing in ("looking at the queue", "renewing leases", "listening"):
        link.lost(lost, doing)
    assert link.down
    link.back()
    link.back()
    assert not link.down
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("database lost (OSError: connection refused, while looking")
    assert messages[1].startswith("database back after")


def test_a_failure_of_an_attempt_begun_before_the_database_came_back_is_old_news(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = DatabaseLink(logging.getLogger("test.outage"))
    caplog.set_level(logging.WARNING, logger="test.outage")
    begun = time.monotonic()
    link.lost(OSError("gone"), "renewing leases", started=begun)
    link.back()
    link.lost(OSError("gone"), "renewing leases", started=begun)  # that same old attempt
    assert not link.down
    assert len(caplog.records) == 2


def test_touch_records_outages_and_lets_other_errors_through() -> None:
    link = DatabaseLink(logging.getLogger("test.outage"))
    with pytest.raises(errors.ConnectionLost), link.touch("claiming"):
        raise errors.ConnectionLost("terminating connection")
    assert link.down
    with pytest.raises(ZeroDivisionError), link.touch("claiming"):
        raise ZeroDivisionError
    assert link.down  # not a sign of the database either way
    with link.touch("claiming"):
        pass
    assert not link.down
