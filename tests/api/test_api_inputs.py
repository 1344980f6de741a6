"""Inputs that must get a clear 4xx: dates at the edge of the calendar, bodies too
large or not UTF-8, a method a path lacks, booleans and numbers given as something
else. Every refusal is the API's error shape, and the API keeps answering after it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.schemas import Input
from api.settings import ApiSettings
from database.types import MAX_DATETIME, MIN_DATETIME

from api_helpers import Account, make_app, make_dataset, make_workflow, rows, scalar, signup

MiB = 1024 * 1024

#: Datetimes Python parses, which have no UTC equivalent in Python's range, or
#: lie too close to its ends to be read back in every time zone; and a naive one.
EDGE_DATETIMES = [
    "0001-01-01T00:00:00+14:00",  # year 0 in UTC
    "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
    "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59.999999+00:00",
    "2026-01-01T00:00:00",  # naive
]


def _cursor(key: Any, ident: str = "00000000-0000-0000-0000-000000000000") -> str:
    raw = json.dumps([key, ident]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert set(body["error"]) == {"code", "message", "details"}
    error: dict[str, Any] = body["error"]
    return error


def _paginated_lists(spec: dict[str, Any]) -> list[str]:
    return sorted(
        path
        for path, ops in spec["paths"].items()
        if any(p["name"] == "cursor" for p in ops.get("get", {}).get("parameters", []))
    )


# --- dates -------------------------------------------------------------------------------------
def test_every_date_typed_input_is_known(client: TestClient) -> None:
    """The date-typed inputs the tests below cover: the cursor of every paginated list,
    and ``expires_at`` of a new key. A new one fails here until it is tested too."""
    spec = client.get("/openapi.json").json()
    assert _paginated_lists(spec) == [
        "/v1/admin/audit-events",
        "/v1/admin/reconciliation-runs",
        "/v1/admin/users",
        "/v1/api-keys",
        "/v1/audit-events",
        "/v1/billing-alerts",
        "/v1/billing-alerts/{alert_id}/deliveries",
        "/v1/credits/transactions",
        "/v1/datasets",
        "/v1/deployments",
        "/v1/deployments/{deployment_id}/requests",
        "/v1/evaluation-criteria",
        "/v1/evaluations/{evaluation_id}/rows",
        "/v1/experiments",
        "/v1/invoices",
        "/v1/jobs",
        "/v1/jobs/{job_id}/logs",
        "/v1/model-versions",
        "/v1/models",
        "/v1/registered-models",
        "/v1/registered-models/{registered_model_id}/versions",
        "/v1/sessions",
        "/v1/tutorials",
        "/v1/workflows",
    ]
    schemas = spec["components"]["schemas"]
    found = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                fmt = json.dumps(param.get("schema", {}))
                if '"format": "date' in fmt:
                    found.append((method, path, param["name"]))
            for media in op.get("requestBody", {}).get("content", {}).values():
                ref = media.get("schema", {}).get("$ref", "")
                props = schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
                for name, prop in props.items():
                    # The format, not any text: descriptions say "validated", "update"...
                    if '"format": "date' in json.dumps(prop):
                        found.append((method, path, name))
    assert found == [
        ("post", "/v1/api-keys", "expires_at"),
        ("get", "/v1/usage", "from"),
        ("get", "/v1/usage", "to"),
        ("get", "/v1/audit-events", "from"),
        ("get", "/v1/audit-events", "to"),
        ("get", "/v1/admin/audit-events", "from"),
        ("get", "/v1/admin/audit-events", "to"),
    ]


def test_edge_dates_in_date_filters_are_clear(
    client: TestClient, account: Account, engine: Engine
) -> None:
    """The ``from`` / ``to`` filters of usage and the audit trail: a date at the
    calendar's edge, naive or past year 9999 in UTC, is a 200 or a 422 naming it,
    never a 500."""
    rows(engine, "UPDATE users SET role = 'admin' WHERE id = :u", u=account.user_id)
    for path in ("/v1/usage", "/v1/audit-events", "/v1/admin/audit-events"):
        for name in ("from", "to"):
            for value in [*EDGE_DATETIMES, MIN_DATETIME.isoformat(), MAX_DATETIME.isoformat()]:
                r = client.get(path, headers=account.headers, params={name: value})
                assert r.status_code in (200, 422), (path, name, value, r.text)
                if r.status_code == 422:
                    assert r.json()["error"]["code"] in (
                        "validation_error",
                        "invalid_value",
                        "invalid_range",
                    )


def test_edge_dates_in_any_cursor_are_422(
    client: TestClient, account: Account, engine: Engine
) -> None:
    # An admin, for /v1/admin/users (as `automl-db users promote`).
    rows(engine, "UPDATE users SET role = 'admin' WHERE id = :u", u=account.user_id)
    lists = _paginated_lists(client.get("/openapi.json").json())
    # A job's log is a list of a job: any job id (the cursor is refused before the job
    # is looked for).
    # So are a registered model's versions (keyed by their number), an alert's
    # deliveries and a deployment's requests.
    for name in (
        "{job_id}",
        "{registered_model_id}",
        "{alert_id}",
        "{deployment_id}",
        "{evaluation_id}",
    ):
        lists = [p.replace(name, str(uuid.uuid4())) for p in lists]
    # Lists of something nobody may see (that job, registered model, alert, deployment
    # or evaluation is nobody's) answer 404 once the cursor is valid.
    refused = {"deliveries": 404, "logs": 404, "versions": 404, "requests": 404, "rows": 404}

    def cursor(path: str, value: str) -> str:
        if path == "/v1/model-versions":  # the search's cursor also names its order
            raw = json.dumps(["created_at DESC", value, str(uuid.uuid4())]).encode()
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return _cursor(value)

    for path in lists:
        for value in EDGE_DATETIMES:
            r = client.get(path, headers=account.headers, params={"cursor": cursor(path, value)})
            _error(r, 422, "invalid_cursor")
        # The ends of the range are keys like any other (tutorials, log lines, evaluation
        # rows and model versions are keyed by an int).
        for value in (MIN_DATETIME, MAX_DATETIME):
            r = client.get(
                path, headers=account.headers, params={"cursor": cursor(path, value.isoformat())}
            )
            if path == "/v1/tutorials" or path.endswith(("/logs", "/versions", "/rows")):
                _error(r, 422, "invalid_cursor")
            else:
                expected = refused.get(path.rsplit("/", 1)[-1], 200)
                assert r.status_code == expected, (path, r.text)
    # Every list still answers: no connection was left broken.
    for path in lists:
        expected = refused.get(path.rsplit("/", 1)[-1], 200)
        assert client.get(path, headers=account.headers).status_code == expected, path


def test_edge_dates_with_filters_and_rows(
    client: TestClient, account: Account, engine: Engine
) -> None:
    """With rows to page through, and a filter beside the cursor."""
    dataset = make_dataset(client, account)
    make_workflow(client, account, dataset["dataset"]["id"])
    for path, params in (
        ("/v1/jobs", {"status": "queued"}),
        ("/v1/workflows", {"deleted": "true"}),
        ("/v1/datasets", {"limit": 1}),
    ):
        for value in EDGE_DATETIMES[:2]:
            r = client.get(
                path, headers=account.headers, params={**params, "cursor": _cursor(value)}
            )
            _error(r, 422, "invalid_cursor")
    everything = client.get(
        "/v1/workflows",
        headers=account.headers,
        params={"cursor": _cursor(MAX_DATETIME.isoformat())},
    )
    assert len(everything.json()["items"]) == 1


def test_edge_expiry_of_a_key_is_422(client: TestClient, account: Account, engine: Engine) -> None:
    for value in EDGE_DATETIMES:
        r = client.post("/v1/api-keys", headers=account.headers, json={"expires_at": value})
        error = _error(r, 422, "validation_error")
        assert error["details"]["errors"][0]["loc"] == ["body", "expires_at"], value
    assert scalar(engine, "SELECT count(*) FROM api_keys") == 1
    # The last instant of the range is a valid (distant) expiry; the offset is kept as UTC.
    far = client.post(
        "/v1/api-keys", headers=account.headers, json={"expires_at": "9999-12-31T13:59:59+14:00"}
    )
    assert far.status_code == 201, far.text
    assert dt.datetime.fromisoformat(far.json()["expires_at"]) == dt.datetime(
        9999, 12, 30, 23, 59, 59, tzinfo=dt.UTC
    )
    listed = client.get("/v1/api-keys", headers=account.headers)
    assert listed.status_code == 200 and len(listed.json()["items"]) == 2


# --- body size ---------------------------------------------------------------------------------
class Chunks:
    """An async body of ``total`` bytes in ``size``-byte chunks, counting what was read."""

    def __init__(self, total: int, size: int = 64 * 1024, head: bytes = b"", fill: bytes = b" "):
        self.total, self.size, self.head, self.fill = total, size, head, fill
        self.sent = 0
        self.exhausted = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head:
            self.sent += len(self.head)
            yield self.head
        while self.sent < self.total:
            chunk = self.fill * min(self.size, self.total - self.sent)
            self.sent += len(chunk)
            yield chunk
        self.exhausted = True


def _stream(
    app: FastAPI, method: str, url: str, body: Chunks, headers: dict[str, str]
) -> httpx.Response:
    """A request whose body streams from ``body`` (httpx's ASGI transport reads it lazily,
    unlike TestClient, which reads a body whole before the app sees it)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, url, content=body.__aiter__(), headers=headers)

    return asyncio.run(go())


def test_a_json_body_over_the_limit_is_413_before_it_is_read(
    app: FastAPI, client: TestClient, account: Account, engine: Engine
) -> None:
    # Declared: refused at once, not one byte read.
    declared = Chunks(300 * MiB)
    r = _stream(
        app,
        "POST",
        "/v1/users",
        declared,
        {"Content-Type": "application/json", "Content-Length": str(300 * MiB)},
    )
    error = _error(r, 413, "body_too_large")
    assert error["details"] == {"limit_bytes": MiB}
    assert declared.sent == 0
    # Chunked (no Content-Length): counted as it streams, refused once past the limit.
    chunked = Chunks(300 * MiB, head=b'{"email": "big@example.com", "full_name": "')
    r = _stream(app, "POST", "/v1/users", chunked, {"Content-Type": "application/json"})
    _error(r, 413, "body_too_large")
    assert not chunked.exhausted and chunked.sent <= MiB + 2 * chunked.size
    assert scalar(engine, "SELECT count(*) FROM users WHERE email = 'big@example.com'") == 0
    # A whole body just over the limit, through the ordinary client.
    big = {"email": "big@example.com", "full_name": "x" * MiB}
    _error(client.post("/v1/users", json=big), 413, "body_too_large")
    # The route of a body refused for its size never runs: the key is not revoked.
    second = client.post("/v1/api-keys", headers=account.headers, json={"name": "b"}).json()
    r = _stream(
        app,
        "DELETE",
        f"/v1/api-keys/{second['id']}",
        Chunks(2 * MiB),
        {**account.headers, "Content-Length": str(2 * MiB)},
    )
    _error(r, 413, "body_too_large")
    assert scalar(engine, "SELECT revoked_at FROM api_keys WHERE id = :i", i=second["id"]) is None
    # And the API goes on.
    assert client.get("/v1/me", headers=account.headers).status_code == 200


def test_json_limit_is_configurable(engine: Engine, api_settings: ApiSettings) -> None:
    settings = api_settings.model_copy(update={"max_json_bytes": 200})
    with TestClient(make_app(engine, settings)) as client:
        small = client.post("/v1/users", json={"email": "s@example.com"})
        assert small.status_code == 201
        r = client.post("/v1/users", json={"email": "t@example.com", "full_name": "x" * 200})
        assert _error(r, 413, "body_too_large")["details"] == {"limit_bytes": 200}
        # Uploads have their own limit (MAX_UPLOAD_BYTES), far above this one.
        account = signup(client)
        csv = b"a,b\n" + b"1,2\n" * 10_000
        assert len(csv) > 200
        assert make_dataset(client, account, content=csv)["version"]["original_size_bytes"] == len(
            csv
        )


def test_an_upload_over_the_limit_is_413_before_it_is_read(
    app: FastAPI, client: TestClient, account: Account, engine: Engine
) -> None:
    boundary = "limitboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\na,b\r\n"
    ).encode()
    headers = {**account.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    # The tests' MAX_UPLOAD_BYTES is 1 MiB.
    chunked = Chunks(300 * MiB, head=head, fill=b"1")
    r = _stream(app, "POST", "/v1/datasets", chunked, headers)
    assert _error(r, 413, "upload_too_large")["details"] == {"limit_bytes": MiB}
    assert not chunked.exhausted and chunked.sent <= 2 * MiB
    declared = Chunks(300 * MiB, head=head, fill=b"1")
    r = _stream(
        app, "POST", "/v1/datasets", declared, {**headers, "Content-Length": str(300 * MiB)}
    )
    _error(r, 413, "upload_too_large")
    assert declared.sent == 0
    assert scalar(engine, "SELECT count(*) FROM datasets") == 0
    assert make_dataset(client, account)["dataset"]["name"] == "iris"


# --- bodies that are not UTF-8 -----------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b'{"email": "\xff@example.com"}',
        b'{"email": "a@example.com", "full_name": "\xc3\x28"}',
        b"\xfe\xff\x00{",
        b"[" * 500_000,  # too deep for the JSON parser
    ],
    ids=["latin1", "bad-sequence", "bom-garbage", "deep"],
)
def test_a_body_that_does_not_decode_is_422(
    client: TestClient, account: Account, engine: Engine, body: bytes
) -> None:
    for path, headers in (("/v1/users", {}), ("/v1/workflows", account.headers)):
        r = client.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
        error = _error(r, 422, "validation_error")
        assert error["details"]["errors"][0]["loc"][0] == "body"
        assert error["details"]["errors"][0]["type"] == "json_invalid"
    assert scalar(engine, "SELECT count(*) FROM users") == 1
    assert scalar(engine, "SELECT count(*) FROM workflows") == 0


def test_non_utf8_message_names_the_problem(client: TestClient) -> None:
    r = client.post(
        "/v1/users", content=b'{"email": "\xff"}', headers={"Content-Type": "application/json"}
    )
    assert "UTF-8" in _error(r, 422, "validation_error")["message"]


# --- 405 ------------------------------------------------------------------------------------
def test_405_allows_every_method_of_the_path(client: TestClient, account: Account) -> None:
    some_id = uuid.uuid4()
    for method, path, allowed in (
        ("PUT", "/v1/api-keys", "GET, POST"),
        ("DELETE", "/v1/datasets", "GET, POST"),
        ("PUT", f"/v1/datasets/{some_id}", "DELETE, GET, PATCH"),
        ("POST", f"/v1/workflows/{some_id}", "DELETE, GET, PATCH"),
        ("PUT", "/v1/me", "DELETE, GET"),
        ("GET", f"/v1/tutorials/{some_id}/progress", "PUT"),
    ):
        r = client.request(method, path, headers=account.headers)
        _error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == allowed, (method, path)


# --- strict types ------------------------------------------------------------------------------
def _tutorial(engine: Engine) -> str:
    return str(scalar(engine, "SELECT id FROM tutorials WHERE is_published ORDER BY sort_order"))


@pytest.mark.usefixtures("seeded")
def test_booleans_and_integers_are_not_coerced(
    client: TestClient, account: Account, engine: Engine
) -> None:
    url = f"/v1/tutorials/{_tutorial(engine)}/progress"
    for body, field in (
        ({"current_step": 0, "is_completed": 0}, "is_completed"),
        ({"current_step": 0, "is_completed": 1}, "is_completed"),
        ({"current_step": 0, "is_completed": "true"}, "is_completed"),
        ({"current_step": 0, "is_completed": "false"}, "is_completed"),
        ({"current_step": 0, "is_completed": None}, "is_completed"),
        ({"current_step": "1"}, "current_step"),
        ({"current_step": 1.0}, "current_step"),
        ({"current_step": True}, "current_step"),
        ({"current_step": 0, "completed_steps": ["0"]}, "completed_steps"),
    ):
        r = client.put(url, headers=account.headers, json=body)
        error = _error(r, 422, "validation_error")
        assert error["details"]["errors"][0]["loc"][:2] == ["body", field], body
    assert scalar(engine, "SELECT count(*) FROM user_tutorial_progress") == 0
    ok = client.put(url, headers=account.headers, json={"current_step": 1, "is_completed": False})
    assert ok.status_code == 200 and ok.json()["is_completed"] is False
    done = client.put(url, headers=account.headers, json={"current_step": 1, "is_completed": True})
    assert done.status_code == 200 and done.json()["is_completed"] is True
    run = client.post(
        f"/v1/workflows/{uuid.uuid4()}/run", headers=account.headers, json={"priority": "5"}
    )
    assert _error(run, 422, "validation_error")["details"]["errors"][0]["loc"] == [
        "body",
        "priority",
    ]


def test_a_request_model_that_would_coerce_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="StrictBool"):

        class Loose(Input):
            flag: bool = False

    with pytest.raises(TypeError, match="numbers"):

        class LooseList(Input):
            numbers: list[int] | None = None

    for model in _subclasses(Input):  # and every request body there is passed the check
        assert model.model_config.get("extra") == "forbid", model


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found
