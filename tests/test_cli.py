"""`automl-db up` and `automl-db status` against a real, initially empty database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import create_engine, text

from database import cli, session
from database.config import get_settings
from database.triggers import expected_triggers

from pgtest import ServerInfo, make_test_url


@pytest.fixture
def empty_db_url(pg_server: ServerInfo, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    dbname = f"cli_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        dbname=dbname,
        password=pg_server.password,
    )
    with janitor:
        url = make_test_url(pg_server.host, pg_server.port, pg_server.user, dbname, None)
        monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
        get_settings.cache_clear()
        yield url.render_as_string(hide_password=False)
        get_settings.cache_clear()
        session.reset()


def test_status_of_an_empty_database_fails(empty_db_url: str, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["status"]) == 1
    out = capsys.readouterr().out
    assert "none (empty database)" in out
    assert "BEHIND head" in out


def test_up_migrates_and_reports_every_table_and_trigger(
    empty_db_url: str, capsys: pytest.CaptureFixture[str]
):
    assert cli.main(["up"]) == 0
    out = capsys.readouterr().out
    assert "(at head)" in out
    import database.models  # noqa: F401
    from database.base import Base

    assert f"tables ({len(Base.metadata.tables)}):" in out
    for trigger in expected_triggers():
        assert trigger.name in out
    assert cli.main(["status"]) == 0
    # up is idempotent
    assert cli.main(["up"]) == 0


def test_status_fails_when_a_trigger_is_missing(
    empty_db_url: str, capsys: pytest.CaptureFixture[str]
):
    assert cli.main(["up"]) == 0
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER credit_tx_no_truncate ON credit_transactions"))
    engine.dispose()
    capsys.readouterr()
    assert cli.main(["status"]) == 1
    assert "MISSING triggers: credit_transactions.credit_tx_no_truncate" in capsys.readouterr().out


def test_an_unreachable_database_is_one_line_without_the_password(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:s3cret-pw@127.0.0.1:1/nowhere")
    get_settings.cache_clear()
    for argv in (["status"], ["up"], ["verify"], ["users", "promote", "a@example.com"]):
        assert cli.main(argv) == cli.Exit.UNREACHABLE == 3
        captured = capsys.readouterr()
        assert "s3cret-pw" not in captured.out + captured.err
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, captured.err  # one line, no traceback
        assert lines[0].startswith(
            f"automl-db {' '.join(argv[:2] if argv[0] == 'users' else argv)}:"
        )
        assert "cannot reach DATABASE_URL=postgresql://app:***@127.0.0.1:1/nowhere" in lines[0]
        assert "Connection refused" in lines[0]


def test_invalid_url_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("DATABASE_URL", "mysql://root@localhost/app")
    get_settings.cache_clear()
    try:
        assert cli.main(["status"]) == 2
    finally:
        get_settings.cache_clear()
    assert "must be a PostgreSQL URL" in capsys.readouterr().err
