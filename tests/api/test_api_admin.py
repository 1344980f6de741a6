"""Admin routes (issue 17): users listed, changed (tier, role, permissions, activity),
credit adjustments; nobody raises their own privileges, and the database says so too
(the app running as the apps' least-privilege role)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from api.settings import ApiSettings
from database import errors
from database.grants import grant

from api_helpers import Account, make_app, rows, scalar, signup


def code(r: Any) -> str:
    value: str = r.json()["error"]["code"]
    return value


def promote(engine: Engine, account: Account) -> None:
    """As ``automl-db users promote``: the owner, no actor."""
    rows(engine, "UPDATE users SET role = 'admin' WHERE id = :u", u=account.user_id)


@pytest.fixture
def admin(client: TestClient, engine: Engine) -> Account:
    a = signup(client)
    promote(engine, a)
    return a


ADMIN_ROUTES = [
    ("get", "/v1/admin/users", None),
    ("get", "/v1/admin/users/{id}", None),
    ("patch", "/v1/admin/users/{id}", {"role": "admin"}),
    (
        "post",
        "/v1/admin/users/{id}/credit-adjustments",
        {"amount": 5, "reason": "x", "idempotency_key": "k"},
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_only_admins(client, account, method, path, body):
    """A user cannot raise their own role (or anything else) through the API."""
    url = path.format(id=account.user_id)
    r = client.request(method, url, headers=account.headers, json=body)
    assert r.status_code == 403 and code(r) == "admin_required"
    r = client.request(method, url, json=body)
    assert r.status_code == 401


def test_list_and_get_users(client, admin, account, other):
    first = client.get("/v1/admin/users?limit=2", headers=admin.headers)
    assert first.status_code == 200
    body = first.json()
    assert len(body["items"]) == 2 and body["next_cursor"]
    second = client.get(
        f"/v1/admin/users?limit=2&cursor={body['next_cursor']}", headers=admin.headers
    ).json()
    ids = {u["id"] for u in body["items"] + second["items"]}
    assert {str(admin.user_id), str(account.user_id), str(other.user_id)} == ids
    one = client.get(f"/v1/admin/users/{account.user_id}", headers=admin.headers).json()
    assert one["role"] == "user" and one["can_train"] is True and one["is_active"] is True
    assert "password_hash" not in one
    missing = client.get(f"/v1/admin/users/{uuid.uuid4()}", headers=admin.headers)
    assert missing.status_code == 404


def test_patch_user(client, admin, account, engine):
    r = client.patch(
        f"/v1/admin/users/{account.user_id}",
        headers=admin.headers,
        json={"tier": "pro", "can_train": False, "can_deploy": False},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["tier"], body["can_train"], body["can_deploy"], body["can_upload"]) == (
        "pro",
        False,
        False,
        True,
    )
    # Deactivated: refused at once.
    r = client.patch(
        f"/v1/admin/users/{account.user_id}", headers=admin.headers, json={"is_active": False}
    )
    assert r.status_code == 200 and r.json()["is_active"] is False
    r = client.get("/v1/me", headers=account.headers)
    assert r.status_code == 403 and code(r) == "account_inactive"
    client.patch(
        f"/v1/admin/users/{account.user_id}", headers=admin.headers, json={"is_active": True}
    )
    assert client.get("/v1/me", headers=account.headers).status_code == 200
    # Promote: now they are an admin.
    r = client.patch(
        f"/v1/admin/users/{account.user_id}", headers=admin.headers, json={"role": "admin"}
    )
    assert r.status_code == 200
    assert client.get("/v1/admin/users", headers=account.headers).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"role": "superuser"},
        {"tier": "platinum"},
        {"can_train": 0},
        {"is_active": "false"},
        {"can_fly": True},
        {"role": None, "can_buy": "yes"},
    ],
)
def test_patch_input_is_checked(client, admin, account, body):
    r = client.patch(f"/v1/admin/users/{account.user_id}", headers=admin.headers, json=body)
    assert r.status_code == 422, r.text


def test_an_admin_cannot_change_their_own_account(client, admin, engine):
    for body in (
        {"role": "user"},
        {"tier": "enterprise"},
        {"is_active": False},
        {"can_buy": False},
    ):
        r = client.patch(f"/v1/admin/users/{admin.user_id}", headers=admin.headers, json=body)
        assert r.status_code == 403 and code(r) == "own_privileges", body
    r = client.post(
        f"/v1/admin/users/{admin.user_id}/credit-adjustments",
        headers=admin.headers,
        json={"amount": 1000, "reason": "me", "idempotency_key": "self"},
    )
    assert r.status_code == 403 and code(r) == "own_privileges"
    assert scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=admin.user_id) == 0
    assert scalar(engine, "SELECT tier::text FROM users WHERE id = :u", u=admin.user_id) == "free"


def test_a_deactivated_admin_is_no_admin(client, admin, account, engine):
    rows(engine, "UPDATE users SET is_active = false WHERE id = :u", u=admin.user_id)
    r = client.get("/v1/admin/users", headers=admin.headers)
    assert r.status_code == 403 and code(r) == "account_inactive"


def test_credit_adjustments_are_idempotent(client, admin, account, engine):
    url = f"/v1/admin/users/{account.user_id}/credit-adjustments"
    body = {"amount": 40, "reason": "goodwill after an outage", "idempotency_key": "ticket-17"}
    first = client.post(url, headers=admin.headers, json=body)
    assert first.status_code == 201, first.text
    again = client.post(url, headers=admin.headers, json=body)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert first.json()["actor"] == f"admin:{admin.user_id}"
    assert scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=account.user_id) == 40
    r = client.post(url, headers=admin.headers, json={**body, "amount": 41})
    assert r.status_code == 409 and code(r) == "duplicate_adjustment"
    r = client.post(
        url, headers=admin.headers, json={"amount": -100, "reason": "x", "idempotency_key": "n"}
    )
    assert r.status_code == 402 and code(r) == "insufficient_credits"
    for bad in (
        {"amount": 0, "reason": "x", "idempotency_key": "z"},
        {"amount": "5", "reason": "x", "idempotency_key": "z"},
        {"amount": 5.0, "reason": "x", "idempotency_key": "z"},
        {"amount": 2**31, "reason": "x", "idempotency_key": "z"},
        {"amount": 5, "reason": "", "idempotency_key": "z"},
        {"amount": 5, "reason": "a\x00b", "idempotency_key": "z"},
        {"amount": 5, "reason": "x"},
    ):
        r = client.post(url, headers=admin.headers, json=bad)
        assert r.status_code == 422, (bad, r.text)
    missing = client.post(
        f"/v1/admin/users/{uuid.uuid4()}/credit-adjustments", headers=admin.headers, json=body
    )
    assert missing.status_code == 404


# =====================================================================================
# the app as the apps' role: the database is the one saying no
# =====================================================================================
@pytest.fixture
def app_role_client(db_url: Any, engine: Engine, api_settings: ApiSettings) -> Iterator[TestClient]:
    name = f"app_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
        grant(conn, name)
    app_engine = errors.install(create_engine(db_url.set(username=name), pool_size=4))
    try:
        with TestClient(make_app(app_engine, api_settings)) as c:
            yield c
    finally:
        app_engine.dispose()
        with engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{name}"'))
            conn.execute(text(f'DROP ROLE "{name}"'))


def test_as_the_apps_role(app_role_client, engine):
    client = app_role_client
    admin, user = signup(client), signup(client)
    promote(engine, admin)
    r = client.patch(
        f"/v1/admin/users/{user.user_id}",
        headers=admin.headers,
        json={"tier": "enterprise", "can_upload": False},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["tier"], r.json()["can_upload"]) == ("enterprise", False)
    r = client.patch(
        f"/v1/admin/users/{admin.user_id}", headers=admin.headers, json={"tier": "pro"}
    )
    assert r.status_code == 403 and code(r) == "own_privileges"
    r = client.post(
        f"/v1/admin/users/{user.user_id}/credit-adjustments",
        headers=admin.headers,
        json={"amount": 9, "reason": "welcome", "idempotency_key": "w-1"},
    )
    assert r.status_code == 201, r.text
    # The whole account's life works under least privilege too.
    r = client.put("/v1/me/password", headers=user.headers, json={"new_password": "pw for role!"})
    assert r.status_code == 200, r.text
    login = client.post("/v1/auth/login", json={"email": user.email, "password": "pw for role!"})
    assert login.status_code == 200, login.text
    token = login.json()["token"]
    assert (
        client.get("/v1/sessions", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )
    assert client.get("/v1/me/export", headers=user.headers).status_code == 200
    assert client.delete("/v1/me", headers=user.headers).status_code == 204
    r = client.post("/v1/auth/restore", json={"email": user.email, "password": "pw for role!"})
    assert r.status_code == 200, r.text
