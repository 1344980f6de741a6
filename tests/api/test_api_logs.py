"""The API's log lines (database.logs): one JSON line per request on ``api.access``
with the request's id and the caller, the API key never in them."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from database import logs

from api_helpers import Account


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.setup("api", stream=out, fmt="json", capture_warnings=False)
    try:
        yield out
    finally:
        logs.reset()


def parsed(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_a_request_is_one_json_line_with_its_id_and_caller(
    client: TestClient, account: Account, log_lines: io.StringIO
) -> None:
    request_id = f"test-{uuid.uuid4().hex}"
    r = client.get("/v1/me", headers={**account.headers, "X-Request-ID": request_id})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == request_id
    mine = [line for line in parsed(log_lines) if line.get("request_id") == request_id]
    assert len(mine) == 1, log_lines.getvalue()
    line = mine[0]
    assert line["logger"] == "api.access" and line["event"] == "request"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v1/me", 200)
    assert line["user_id"] == str(account.user_id)
    assert line["process"] == "api" and line["duration_ms"] >= 0
    assert account.key not in log_lines.getvalue()


def test_a_refused_request_has_its_line_and_no_caller(
    client: TestClient, log_lines: io.StringIO
) -> None:
    r = client.get("/v1/me", headers={"Authorization": "Bearer aml_not-a-key-0123456789"})
    assert r.status_code == 401
    request_id = r.headers["x-request-id"]
    (line,) = [x for x in parsed(log_lines) if x.get("request_id") == request_id]
    assert line["status"] == 401 and "user_id" not in line
    assert "aml_not-a-key" not in log_lines.getvalue()


def test_a_line_logged_inside_a_request_carries_its_id(
    client: TestClient, account: Account, log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any logger used while the request runs (here: one called by the route, in the
    threadpool it runs in) gets request_id and user_id."""
    from api.routers import users

    original = users.limits_for

    def limits_for(*args: Any, **kwargs: Any) -> Any:
        logging.getLogger("probe").warning("reading the limits")
        return original(*args, **kwargs)

    monkeypatch.setattr(users, "limits_for", limits_for)
    r = client.get("/v1/me", headers=account.headers)
    assert r.status_code == 200
    (probe,) = [x for x in parsed(log_lines) if x.get("logger") == "probe"]
    assert probe["request_id"] == r.headers["x-request-id"]
    assert probe["user_id"] == str(account.user_id)
