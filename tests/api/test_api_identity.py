"""Sign-up, authentication, API keys and scopes."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from database.lifecycle import soft_delete_user

from api_helpers import Account, rows, scalar, signup


def test_sign_up_creates_a_user_and_a_key_stored_hashed(client: TestClient, engine: Engine) -> None:
    r = client.post("/v1/users", json={"email": "  Ada@Example.COM ", "full_name": "Ada"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["tier"] == "free" and body["user"]["credit_balance"] == 0
    key = body["api_key"]["key"]
    assert key.startswith("aml_") and len(key) > 40
    assert body["api_key"]["prefix"] == key[:12]
    assert sorted(body["api_key"]["scopes"]) == ["billing", "keys", "read", "write"]
    [(stored_hash, prefix)] = rows(
        engine, "SELECT key_hash, prefix FROM api_keys WHERE id = :id", id=body["api_key"]["id"]
    )
    assert stored_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(rows(engine, "SELECT * FROM api_keys"))  # never the plain key
    assert prefix == key[:12]

    me = client.get("/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200, me.text
    assert me.json()["id"] == body["user"]["id"]
    assert me.json()["usage"] == {
        "datasets": 0,
        "workflows": 0,
        "models": 0,
        "storage_bytes": 0,
        "running_jobs": 0,
    }
    assert me.json()["limits"]["max_datasets"] == 10


def test_sign_up_refusals(client: TestClient) -> None:
    signup(client, "taken@example.com")
    again = client.post("/v1/users", json={"email": "TAKEN@example.com"})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_exists"
    for bad in ({"email": "not-an-email"}, {}, {"email": "a@b.c", "extra": 1}, {"email": 5}):
        r = client.post("/v1/users", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "validation_error"
    nul = client.post("/v1/users", json={"email": "nul@example.com", "full_name": "a\x00b"})
    assert nul.status_code == 422


def test_requests_need_a_valid_bearer_key(client: TestClient, account: Account) -> None:
    cases = {
        "unauthenticated": {},
        "invalid_api_key": {"Authorization": "Bearer aml_not-a-real-key"},
    }
    for code, headers in cases.items():
        r = client.get("/v1/me", headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == code
        assert r.headers["www-authenticate"] == "Bearer"
    basic = client.get("/v1/me", headers={"Authorization": f"Basic {account.key}"})
    assert basic.status_code == 401
    assert client.get("/v1/me", headers=account.headers).status_code == 200


def test_keys_are_listed_created_and_revoked(client: TestClient, account: Account) -> None:
    created = client.post(
        "/v1/api-keys", headers=account.headers, json={"name": "ci", "scopes": ["read"]}
    )
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["scopes"] == ["read"] and new["name"] == "ci"
    new_headers = {"Authorization": f"Bearer {new['key']}"}
    assert client.get("/v1/me", headers=new_headers).status_code == 200

    listed = client.get("/v1/api-keys", headers=account.headers)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [k["id"] for k in items] == [new["id"], str(account.key_id)]  # newest first
    assert all("key" not in k for k in items)

    assert client.delete(f"/v1/api-keys/{new['id']}", headers=account.headers).status_code == 204
    after = client.get("/v1/me", headers=new_headers)
    assert after.status_code == 401 and after.json()["error"]["code"] == "api_key_revoked"
    # Revoking again changes nothing; the other key still works.
    assert client.delete(f"/v1/api-keys/{new['id']}", headers=account.headers).status_code == 204
    assert client.get("/v1/me", headers=account.headers).status_code == 200


def test_last_used_is_recorded(client: TestClient, account: Account, engine: Engine) -> None:
    before = scalar(engine, "SELECT last_used_at FROM api_keys WHERE id = :id", id=account.key_id)
    assert before is None
    client.get("/v1/me", headers=account.headers)
    used = scalar(engine, "SELECT last_used_at FROM api_keys WHERE id = :id", id=account.key_id)
    assert used is not None
    # Within the resolution the time is not rewritten on every request.
    client.get("/v1/me", headers=account.headers)
    again = scalar(engine, "SELECT last_used_at FROM api_keys WHERE id = :id", id=account.key_id)
    assert again == used


def test_expired_keys_stop_working(client: TestClient, account: Account, engine: Engine) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    r = client.post(
        "/v1/api-keys",
        headers=account.headers,
        json={"name": "short", "expires_at": soon.isoformat()},
    )
    assert r.status_code == 201, r.text
    key = r.json()
    headers = {"Authorization": f"Bearer {key['key']}"}
    assert client.get("/v1/me", headers=headers).status_code == 200
    # Move the key's life into the past (created_at too, for the expiry check).
    rows(
        engine,
        "UPDATE api_keys SET created_at = now() - interval '2 days',"
        " expires_at = now() - interval '1 day' WHERE id = :id",
        id=key["id"],
    )
    expired = client.get("/v1/me", headers=headers)
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "api_key_expired"


def test_expiry_must_be_future_and_aware(client: TestClient, account: Account) -> None:
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    r = client.post("/v1/api-keys", headers=account.headers, json={"expires_at": past})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_expiry"
    naive = client.post(
        "/v1/api-keys", headers=account.headers, json={"expires_at": "2999-01-01T00:00:00"}
    )
    assert naive.status_code == 422


def test_scopes_are_enforced_and_cannot_grow(client: TestClient, account: Account) -> None:
    reader = client.post(
        "/v1/api-keys", headers=account.headers, json={"name": "ro", "scopes": ["read"]}
    ).json()
    ro = {"Authorization": f"Bearer {reader['key']}"}
    assert client.get("/v1/datasets", headers=ro).status_code == 200
    denied = client.post("/v1/workflows", headers=ro, json={"name": "x"})
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "insufficient_scope"
    assert denied.json()["error"]["details"]["required_scope"] == "write"
    # Key management needs the keys scope; a key cannot mint a wider key.
    assert client.get("/v1/api-keys", headers=ro).status_code == 403
    keys_only = client.post(
        "/v1/api-keys", headers=account.headers, json={"scopes": ["keys"]}
    ).json()
    ko = {"Authorization": f"Bearer {keys_only['key']}"}
    wider = client.post("/v1/api-keys", headers=ko, json={"scopes": ["keys", "write"]})
    assert wider.status_code == 403 and wider.json()["error"]["details"]["scopes"] == ["write"]
    default = client.post("/v1/api-keys", headers=ko, json={})
    assert default.status_code == 201 and default.json()["scopes"] == ["keys"]


def test_a_key_needs_at_least_one_scope(
    client: TestClient, account: Account, engine: Engine
) -> None:
    r = client.post("/v1/api-keys", headers=account.headers, json={"name": "none", "scopes": []})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"]["errors"][0]["loc"] == ["body", "scopes"]
    assert scalar(engine, "SELECT count(*) FROM api_keys WHERE name = 'none'") == 0


def test_a_key_manages_only_keys_with_no_more_scopes(
    client: TestClient, account: Account, engine: Engine
) -> None:
    def new_key(headers: dict[str, str], scopes: list[str]) -> dict[str, str]:
        r = client.post("/v1/api-keys", headers=headers, json={"scopes": scopes})
        assert r.status_code == 201, r.text
        body: dict[str, str] = r.json()
        return body

    keys_only = new_key(account.headers, ["keys"])
    ko = {"Authorization": f"Bearer {keys_only['key']}"}
    reader = new_key(account.headers, ["read", "keys"])
    # Revoking the account's full key, or a key with a scope it lacks, is refused.
    for wider_id, beyond in (
        (account.key_id, ["billing", "read", "write"]),
        (reader["id"], ["read"]),
    ):
        r = client.delete(f"/v1/api-keys/{wider_id}", headers=ko)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "insufficient_scope"
        assert r.json()["error"]["details"]["scopes"] == beyond
    revoked = scalar(
        engine,
        "SELECT count(*) FROM api_keys WHERE id IN (:a, :b) AND revoked_at IS NOT NULL",
        a=account.key_id,
        b=reader["id"],
    )
    assert revoked == 0
    assert client.get("/v1/me", headers=account.headers).status_code == 200
    # It may list them (no secret is shown) ...
    listed = client.get("/v1/api-keys", headers=ko).json()["items"]
    assert {k["id"] for k in listed} >= {str(account.key_id), reader["id"]}
    assert all("key" not in k for k in listed)
    # ... and revoke keys with the same scopes or fewer, itself included.
    peer = new_key(ko, ["keys"])
    assert client.delete(f"/v1/api-keys/{peer['id']}", headers=ko).status_code == 204
    rk = {"Authorization": f"Bearer {reader['key']}"}
    assert client.delete(f"/v1/api-keys/{keys_only['id']}", headers=rk).status_code == 204
    assert client.get("/v1/api-keys", headers=ko).json()["error"]["code"] == "api_key_revoked"
    # The full key manages every key.
    assert client.delete(f"/v1/api-keys/{reader['id']}", headers=account.headers).status_code == 204


def test_keys_of_a_soft_deleted_user_stop_working(
    client: TestClient, account: Account, engine: Engine
) -> None:
    assert client.get("/v1/me", headers=account.headers).status_code == 200
    with Session(engine) as session:
        soft_delete_user(session, account.user_id)
    r = client.get("/v1/me", headers=account.headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "account_deleted"


def test_another_users_key_is_not_found(
    client: TestClient, account: Account, other: Account
) -> None:
    r = client.delete(f"/v1/api-keys/{other.key_id}", headers=account.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    missing = client.delete(f"/v1/api-keys/{uuid.uuid4()}", headers=account.headers)
    assert missing.status_code == 404 and missing.json() == r.json()
    # Their key still works, and is not in our list.
    assert client.get("/v1/me", headers=other.headers).status_code == 200
    ids = [k["id"] for k in client.get("/v1/api-keys", headers=account.headers).json()["items"]]
    assert str(other.key_id) not in ids


def test_key_list_is_paginated(client: TestClient, account: Account) -> None:
    for i in range(4):
        client.post("/v1/api-keys", headers=account.headers, json={"name": f"k{i}"})
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/api-keys", headers=account.headers, params=params).json()
        seen += [k["id"] for k in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and len(seen) == 5 == len(set(seen))
    bad = client.get("/v1/api-keys", headers=account.headers, params={"cursor": "garbage"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_cursor"
