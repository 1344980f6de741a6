"""Issue 14, metering's routes: GET /v1/usage, GET /v1/deployments/{id}/requests,
API key quotas (create, change), and the 402 / 429 answers of metering's refusals.

``deployments`` is serving's table: here a minimal stand-in (id, user_id) is made in
the test database only, for the ownership query of the requests route.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api.errors import from_database
from database import errors, metering
from database.models import InferenceStatus

from api_helpers import Account, give_credits, scalar, signup


@pytest.fixture(autouse=True)
def _prices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Metered use is priced by the price book (1 credit per 1,000 predicted rows).
    yield


@pytest.fixture
def deployments() -> None:
    """Kept for the tests' signatures: serving's table is in the schema."""


def deployment_of(engine: Engine, account: Account) -> uuid.UUID:
    """A deployment of the account's: a trained model, registered as a version, deployed."""
    with engine.begin() as conn:
        model = conn.execute(
            text(
                "INSERT INTO models (user_id, name, algorithm, problem_type)"
                " VALUES (:u, 'm', 'random_forest', 'classification') RETURNING id"
            ),
            {"u": account.user_id},
        ).scalar_one()
        registered = conn.execute(
            text("INSERT INTO registered_models (user_id, name) VALUES (:u, :n) RETURNING id"),
            {"u": account.user_id, "n": f"rm-{uuid.uuid4().hex[:8]}"},
        ).scalar_one()
        version = conn.execute(
            text(
                "INSERT INTO model_versions (registered_model_id, model_id)"
                " VALUES (:r, :m) RETURNING id"
            ),
            {"r": registered, "m": model},
        ).scalar_one()
        return uuid.UUID(
            str(
                conn.execute(
                    text(
                        "INSERT INTO deployments (user_id, name, model_version_id)"
                        " VALUES (:u, :n, :v) RETURNING id"
                    ),
                    {"u": account.user_id, "n": f"d-{uuid.uuid4().hex[:8]}", "v": version},
                ).scalar_one()
            )
        )


def serve(engine: Engine, account: Account, dep: uuid.UUID, rows: int, **kw: Any) -> None:
    from sqlalchemy.orm import Session

    rid = uuid.uuid4().hex
    status = kw.pop("status", InferenceStatus.OK)
    if status is InferenceStatus.OK:
        with Session(engine) as s:
            metering.admit(
                s,
                user_id=account.user_id,
                api_key_id=None,
                deployment_id=dep,
                rows=rows,
                request_id=rid,
            )
    metering.record_request(
        engine,
        user_id=account.user_id,
        api_key_id=account.key_id,
        deployment_id=dep,
        model_version_id=uuid.uuid4(),
        rows=rows,
        latency_ms=4,
        status=status,
        error_class=kw.pop("error_class", None),
        request_id=rid,
    )


def soon() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)


# =====================================================================================
# GET /v1/usage
# =====================================================================================
def test_usage_reports_what_was_used_and_paid(client: TestClient, engine: Engine, account):
    give_credits(engine, account.user_id, 10)
    a, b = uuid.uuid4(), uuid.uuid4()
    serve(engine, account, a, 1500)
    serve(engine, account, b, 700)
    serve(engine, account, a, 5, status=InferenceStatus.CLIENT_ERROR, error_class="KeyError")
    metering.charge_usage(engine, through=soon())
    r = client.get("/v1/usage", params={"group_by": "deployment"}, headers=account.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    by_key = {i["key"]: i for i in body["items"]}
    assert by_key[str(a)]["quantity"] == 1500 and by_key[str(b)]["quantity"] == 700
    assert by_key[str(a)]["cost_credits"] == "1.5"
    assert by_key[str(a)]["charged_credits"] + by_key[str(b)]["charged_credits"] == 2
    assert body["total_quantity"] == 2200 and body["total_charged_credits"] == 2
    # The ledger agrees: 10 - 2.
    assert scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=account.user_id) == 8
    for group in ("day", "sku"):
        r = client.get("/v1/usage", params={"group_by": group}, headers=account.headers)
        assert r.status_code == 200 and r.json()["total_quantity"] == 2200
    day = client.get("/v1/usage", params={"group_by": "day"}, headers=account.headers).json()
    assert day["items"][0]["key"] == dt.datetime.now(dt.UTC).date().isoformat()
    # Nobody else's.
    other = signup(client)
    assert client.get("/v1/usage", headers=other.headers).json()["items"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"group_by": "hour"},
        {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2026-01-01T00:00:00"},  # no zone
        {"from": "not a date"},
        {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},  # too long
        {"to": "10000-01-01T00:00:00Z"},
        {"from": "2026-01-01T00:00:00\x00Z"},
    ],
)
def test_usage_refuses_bad_queries(client: TestClient, account, params):
    r = client.get("/v1/usage", params=params, headers=account.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in {"validation_error", "invalid_range", "invalid_value"}


def test_usage_at_the_edge_of_the_calendar(client: TestClient, account):
    for params in ({"to": "0001-01-03T00:00:00Z"}, {"from": "9999-12-29T00:00:00Z"}):
        r = client.get("/v1/usage", params=params, headers=account.headers)
        assert r.status_code in (200, 422), r.text


def test_without_serving_s_table_no_deployment_is_anyones(client: TestClient, account):
    r = client.get(f"/v1/deployments/{uuid.uuid4()}/requests", headers=account.headers)
    assert r.status_code == 404


def test_usage_needs_a_key(client: TestClient):
    assert client.get("/v1/usage").status_code == 401


# =====================================================================================
# GET /v1/deployments/{id}/requests
# =====================================================================================
def test_a_deployments_requests_in_keyset_pages(
    client: TestClient, engine: Engine, account, deployments
):
    give_credits(engine, account.user_id, 10)
    dep = deployment_of(engine, account)
    for i in range(5):
        serve(engine, account, dep, i + 1)
    serve(engine, account, dep, 2, status=InferenceStatus.SERVER_ERROR, error_class="MemoryError")
    serve(engine, account, uuid.uuid4(), 9)  # another deployment's
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = client.get(f"/v1/deployments/{dep}/requests", params=params, headers=account.headers)
        assert r.status_code == 200, r.text
        seen.extend(r.json()["items"])
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 6 and len({s["id"] for s in seen}) == 6
    stamps = [s["created_at"] for s in seen]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    assert seen[0]["status"] == "server_error" and seen[0]["error_class"] == "MemoryError"
    assert "records" not in seen[0] and "payload" not in seen[0]
    failed = client.get(
        f"/v1/deployments/{dep}/requests",
        params={"status": "server_error"},
        headers=account.headers,
    ).json()["items"]
    assert [f["rows"] for f in failed] == [2]


def test_another_users_or_an_unknown_deployment_is_not_found(
    client: TestClient, engine: Engine, account, other, deployments
):
    dep = deployment_of(engine, account)
    serve(engine, account, dep, 0, status=InferenceStatus.CLIENT_ERROR)
    for who, target in ((other, dep), (account, uuid.uuid4())):
        r = client.get(f"/v1/deployments/{target}/requests", headers=who.headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/deployments/not-a-uuid/requests", headers=account.headers)
    assert r.status_code == 422
    r = client.get(
        f"/v1/deployments/{dep}/requests",
        params={"cursor": "garbage\x00"},
        headers=account.headers,
    )
    assert 400 <= r.status_code < 500


# =====================================================================================
# API key quotas
# =====================================================================================
def test_a_key_is_created_with_quotas_and_they_can_be_changed(client: TestClient, account):
    r = client.post(
        "/v1/api-keys",
        json={"name": "metered", "rate_limit_per_minute": 60, "monthly_row_quota": 100000},
        headers=account.headers,
    )
    assert r.status_code == 201, r.text
    key = r.json()
    assert key["rate_limit_per_minute"] == 60 and key["monthly_row_quota"] == 100000
    r = client.patch(
        f"/v1/api-keys/{key['id']}", json={"rate_limit_per_minute": 5}, headers=account.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["rate_limit_per_minute"] == 5 and r.json()["monthly_row_quota"] == 100000
    r = client.patch(
        f"/v1/api-keys/{key['id']}", json={"monthly_row_quota": None}, headers=account.headers
    )
    assert r.json()["monthly_row_quota"] is None and r.json()["rate_limit_per_minute"] == 5
    listed = client.get("/v1/api-keys", headers=account.headers).json()["items"]
    assert {k["id"]: k["rate_limit_per_minute"] for k in listed}[key["id"]] == 5


@pytest.mark.parametrize(
    "body",
    [
        {"rate_limit_per_minute": 0},
        {"rate_limit_per_minute": "5"},
        {"rate_limit_per_minute": True},
        {"monthly_row_quota": -1},
        {"monthly_row_quota": 10**16},
        {"monthly_row_quota": 1.5},
        {"burst": 3},
    ],
)
def test_bad_quotas_are_refused(client: TestClient, account, body):
    r = client.post("/v1/api-keys", json={"name": "k", **body}, headers=account.headers)
    assert r.status_code == 422, r.text
    r = client.patch(f"/v1/api-keys/{account.key_id}", json=body, headers=account.headers)
    assert r.status_code == 422, r.text


def test_another_users_key_cannot_be_changed(client: TestClient, account, other):
    r = client.patch(
        f"/v1/api-keys/{other.key_id}", json={"rate_limit_per_minute": 1}, headers=account.headers
    )
    assert r.status_code == 404


def test_metering_refusals_answer_402_and_429_with_retry_after():
    quota = from_database(
        errors.QuotaExceeded(
            "spent", sqlstate="ML088", detail="quota=rate_limit_per_minute limit=5 retry_after=17"
        )
    )
    assert (quota.status, quota.code, quota.headers["Retry-After"]) == (429, "quota_exceeded", "17")
    assert quota.details == {"quota": "rate_limit_per_minute", "limit": 5, "retry_after": 17}
    pay = from_database(
        errors.PaymentRequired("no", sqlstate="ML087", detail="needed=1500 available=-3")
    )
    assert (pay.status, pay.code) == (402, "payment_required")
    assert pay.details == {"needed_credits": "0.0015", "available_credits": "0.0"}
