"""The audit trail through the API: the request's actor on every audited change,
``GET /v1/audit-events`` (own), ``GET /v1/admin/audit-events`` (administrators),
downloads recorded, the request id."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.settings import ApiSettings

from api_helpers import Account, rows, scalar, signup


def _events(engine: Engine, entity_id: uuid.UUID | str) -> list:
    return rows(
        engine,
        "SELECT * FROM audit_events WHERE entity_id = :e ORDER BY occurred_at, id",
        e=str(entity_id),
    )


def test_key_changes_through_the_api_carry_the_requests_actor(
    client: TestClient, account: Account, engine: Engine
) -> None:
    created = client.post(
        "/v1/api-keys",
        json={"name": "ci", "scopes": ["read"]},
        headers={**account.headers, "X-Request-ID": "build-42", "User-Agent": "ci-bot/1.0"},
    )
    assert created.status_code == 201, created.text
    assert created.headers["x-request-id"] == "build-42"
    key_id = created.json()["id"]
    revoked = client.delete(f"/v1/api-keys/{key_id}", headers=account.headers)
    assert revoked.status_code == 204
    request_id = revoked.headers["x-request-id"]
    assert len(request_id) == 32  # made by the API: none was sent
    made, gone = _events(engine, key_id)
    assert (made.action, gone.action) == ("api_key.created", "api_key.revoked")
    for event in (made, gone):
        assert event.actor_user_id == account.user_id
        assert event.actor_api_key_id == account.key_id
        assert event.subject_user_id == account.user_id
    assert (made.request_id, made.user_agent) == ("build-42", "ci-bot/1.0")
    assert gone.request_id == request_id
    # The test client's peer is "testclient", not an address: no IP is recorded.
    assert made.client_ip is None


def test_signup_attributes_the_first_key_to_the_new_user(
    client: TestClient, engine: Engine
) -> None:
    new = signup(client)
    (made,) = _events(engine, new.key_id)
    assert made.action == "api_key.created" and made.actor_user_id == new.user_id
    (user_created,) = _events(engine, new.user_id)
    assert user_created.action == "user.created"


def test_a_malformed_request_id_is_replaced(client: TestClient, account: Account) -> None:
    for bad in [b"", b"has spaces", b"x" * 201, "ünïcode".encode(), b"a\x00b"]:
        r = client.get("/v1/me", headers={**account.headers, "X-Request-ID": bad})  # type: ignore[dict-item]
        assert r.status_code == 200
        assert r.headers["x-request-id"].encode() != bad and len(r.headers["x-request-id"]) == 32
    # Every answer carries one, an error too.
    assert "x-request-id" in client.get("/v1/me").headers


def test_own_trail_filters_and_pages(
    client: TestClient, account: Account, other: Account, engine: Engine
) -> None:
    for i in range(5):
        r = client.post("/v1/api-keys", json={"name": f"k{i}"}, headers=account.headers)
        assert r.status_code == 201
    client.post("/v1/api-keys", json={"name": "theirs"}, headers=other.headers)
    # A raw SQL change of one of my keys by someone else: about what is mine, so mine to see.
    key_id = rows(
        engine,
        "SELECT id FROM api_keys WHERE user_id = :u AND id <> :k LIMIT 1",
        u=account.user_id,
        k=account.key_id,
    )
    rows(engine, "UPDATE api_keys SET revoked_at = now() WHERE id = :k", k=key_id[0][0])

    seen: list[dict] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/audit-events", params=params, headers=account.headers)
        assert page.status_code == 200, page.text
        seen.extend(page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    actions = [e["action"] for e in seen]
    # user.created, the signup's key and five more, the revocation; nothing of the other's.
    assert sorted(actions) == sorted(
        ["user.created"] + ["api_key.created"] * 6 + ["api_key.revoked"]
    )
    assert len({e["id"] for e in seen}) == len(seen)
    assert [e["occurred_at"] for e in seen] == sorted(
        (e["occurred_at"] for e in seen), reverse=True
    )
    assert all(
        account.user_id in {_uuid(e["actor_user_id"]), _uuid(e["subject_user_id"])} for e in seen
    )
    revoked = next(e for e in seen if e["action"] == "api_key.revoked")
    assert revoked["actor_user_id"] is None and revoked["detail"]["column"] == "revoked_at"

    exact = client.get(
        "/v1/audit-events", params={"action": "api_key.revoked"}, headers=account.headers
    )
    assert [e["action"] for e in exact.json()["items"]] == ["api_key.revoked"]
    prefix = client.get("/v1/audit-events", params={"action": "api_key."}, headers=account.headers)
    assert len(prefix.json()["items"]) == 7
    newest = seen[0]["occurred_at"]
    after = client.get("/v1/audit-events", params={"from": newest}, headers=account.headers)
    assert [e["id"] for e in after.json()["items"]] == [seen[0]["id"]]
    before = client.get("/v1/audit-events", params={"to": newest}, headers=account.headers)
    assert len(before.json()["items"]) == len(seen) - 1
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    empty = client.get("/v1/audit-events", params={"from": future}, headers=account.headers)
    assert empty.status_code == 200 and empty.json() == {"items": [], "next_cursor": None}


def _uuid(value: str | None) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


def test_bad_filters_are_422(client: TestClient, account: Account) -> None:
    cases = [
        {"action": "API_KEY"},
        {"action": "a" * 101},
        {"action": "api_key.created\x00"},
        {"from": "2026-12-01T00:00:00"},  # naive
        {"from": "yesterday"},
        {"from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
        {"cursor": "not-a-cursor"},
        {"limit": 0},
        {"limit": 201},
    ]
    for params in cases:
        r = client.get("/v1/audit-events", params=params, headers=account.headers)
        assert r.status_code == 422, (params, r.text)
        assert "error" in r.json()
    r = client.get(
        "/v1/audit-events",
        params={"from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
        headers=account.headers,
    )
    assert r.json()["error"]["code"] == "invalid_range"


def test_the_admin_list_refuses_everyone_until_roles_exist(
    client: TestClient, account: Account
) -> None:
    r = client.get("/v1/admin/audit-events", headers=account.headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
    assert client.get("/v1/admin/audit-events").status_code == 401
    assert client.get("/v1/audit-events").status_code == 401


def test_downloads_are_recorded(
    client: TestClient, account: Account, other: Account, engine: Engine, api_settings: ApiSettings
) -> None:
    artifact = Path(api_settings.storage_location()) / "models" / "m.joblib"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"model")
    model_id = scalar(
        engine,
        "INSERT INTO models (user_id, name, algorithm, problem_type, s3_path)"
        " VALUES (:u, 'm', 'random_forest', 'classification', :p) RETURNING id",
        u=account.user_id,
        p=str(artifact),
    )
    ok = client.get(f"/v1/models/{model_id}/artifact", headers=account.headers)
    assert ok.status_code == 200
    # Another user's attempt: 404 as always, and nothing recorded about the model.
    assert client.get(f"/v1/models/{model_id}/artifact", headers=other.headers).status_code == 404
    artifact.unlink()
    gone = client.get(f"/v1/models/{model_id}/artifact", headers=account.headers)
    assert gone.status_code == 404
    events = _events(engine, model_id)
    assert [(e.action, e.outcome) for e in events] == [
        ("model.downloaded", "success"),
        ("model.downloaded", "failed"),
    ]
    assert {e.actor_user_id for e in events} == {account.user_id}
    assert events[0].detail == {"file": "m.joblib"}
    assert events[1].detail == {"reason": "artifact_not_in_storage"}
    listed = client.get(
        "/v1/audit-events", params={"action": "model.downloaded"}, headers=account.headers
    ).json()["items"]
    assert [e["outcome"] for e in listed] == ["failed", "success"]
