"""Password login and sessions, email verification, permissions and inactive accounts,
the account's deletion, restore and export, and the abuse limits (issue 17)."""

from __future__ import annotations

import io
import json
import threading
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine

from api.mail import MemoryMailer
from api.settings import ApiSettings, Identity
from database import errors

from api_helpers import (
    Account,
    give_credits,
    make_app,
    make_dataset,
    rows,
    scalar,
    signup,
    start_api_processes,
)

PASSWORD = "correct horse battery"


@pytest.fixture
def mailer(app: FastAPI) -> MemoryMailer:
    m = MemoryMailer()
    app.state.mailer = m
    return m


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def set_password(client: TestClient, account: Account, password: str = PASSWORD) -> None:
    r = client.put("/v1/me/password", headers=account.headers, json={"new_password": password})
    assert r.status_code == 200, r.text


def login(client: TestClient, email: str, password: str = PASSWORD) -> str:
    r = client.post("/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


def code(r: Any) -> str:
    value: str = r.json()["error"]["code"]
    return value


# =====================================================================================
# login, sessions, logout, password change
# =====================================================================================
def test_login_gives_a_session_used_like_a_key(client, account, engine):
    set_password(client, account)
    r = client.post(
        "/v1/auth/login",
        json={"email": account.email.upper(), "password": PASSWORD},
        headers={"User-Agent": "pytest-browser"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    token = body["token"]
    assert token.startswith("ams_") and body["expires_at"]
    me = client.get("/v1/me", headers=bearer(token))
    assert me.status_code == 200 and me.json()["id"] == str(account.user_id)
    # Stored as a hash only; the password as argon2id.
    assert token not in str(rows(engine, "SELECT * FROM user_sessions"))
    assert scalar(engine, "SELECT user_agent FROM user_sessions") == "pytest-browser"
    stored = scalar(engine, "SELECT password_hash FROM users WHERE id = :u", u=account.user_id)
    assert stored.startswith("$argon2id$")
    listed = client.get("/v1/sessions", headers=bearer(token)).json()["items"]
    assert [(s["id"], s["current"]) for s in listed] == [(body["session_id"], True)]
    assert "token_hash" not in listed[0]


def test_wrong_password_and_unknown_email_answer_the_same(client, account):
    set_password(client, account)
    wrong = client.post(
        "/v1/auth/login", json={"email": account.email, "password": "nope nope nope"}
    )
    unknown = client.post(
        "/v1/auth/login", json={"email": "nobody@example.com", "password": "nope nope nope"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert code(wrong) == "invalid_credentials"
    # An account without a password cannot log in either.
    other = signup(client)
    r = client.post("/v1/auth/login", json={"email": other.email, "password": "whatever it is"})
    assert r.status_code == 401 and r.json() == unknown.json()


def test_logout_and_revoke_are_refused_at_once(client, account, other):
    set_password(client, account)
    first, second = login(client, account.email), login(client, account.email)
    assert client.post("/v1/auth/logout", headers=bearer(first)).status_code == 204
    r = client.get("/v1/me", headers=bearer(first))
    assert r.status_code == 401 and code(r) == "session_revoked"
    assert client.get("/v1/me", headers=bearer(second)).status_code == 200
    # A key does not log out.
    r = client.post("/v1/auth/logout", headers=account.headers)
    assert r.status_code == 422 and code(r) == "not_a_session"
    sessions = client.get("/v1/sessions", headers=account.headers).json()["items"]
    live = next(s for s in sessions if s["revoked_at"] is None)
    # Another user's session is a missing one.
    assert client.delete(f"/v1/sessions/{live['id']}", headers=other.headers).status_code == 404
    assert client.delete(f"/v1/sessions/{uuid.uuid4()}", headers=account.headers).status_code == 404
    assert client.delete(f"/v1/sessions/{live['id']}", headers=account.headers).status_code == 204
    r = client.get("/v1/me", headers=bearer(second))
    assert r.status_code == 401 and code(r) == "session_revoked"
    assert client.delete(f"/v1/sessions/{live['id']}", headers=account.headers).status_code == 204


def test_an_expired_session_is_refused(client, account, engine):
    set_password(client, account)
    token = login(client, account.email)
    rows(engine, "UPDATE user_sessions SET expires_at = created_at + interval '1 microsecond'")
    r = client.get("/v1/me", headers=bearer(token))
    assert r.status_code == 401 and code(r) == "session_expired"
    for bogus in ("ams_" + "x" * 43, "ams_", "ams_" + "x" * 300):
        r = client.get("/v1/me", headers=bearer(bogus))
        assert r.status_code == 401 and code(r) == "invalid_session"


def test_password_change_revokes_the_other_sessions(client, account):
    set_password(client, account)
    a, b = login(client, account.email), login(client, account.email)
    # Now the current password is required.
    r = client.put("/v1/me/password", headers=bearer(a), json={"new_password": "another password"})
    assert r.status_code == 403 and code(r) == "password_required"
    r = client.put(
        "/v1/me/password",
        headers=bearer(a),
        json={"new_password": "another password", "current_password": "not it at all"},
    )
    assert r.status_code == 403 and code(r) == "password_required"
    r = client.put(
        "/v1/me/password",
        headers=bearer(a),
        json={"new_password": "another password", "current_password": PASSWORD},
    )
    assert r.status_code == 200 and r.json() == {"sessions_revoked": 1}
    assert client.get("/v1/me", headers=bearer(a)).status_code == 200
    assert code(client.get("/v1/me", headers=bearer(b))) == "session_revoked"
    assert (
        client.post(
            "/v1/auth/login", json={"email": account.email, "password": PASSWORD}
        ).status_code
        == 401
    )
    login(client, account.email, "another password")


@pytest.mark.parametrize(
    ("password", "status", "error"),
    [
        ("short", 422, "invalid_password"),
        ("ten chars\x00!", 422, "invalid_password"),
        ("          ", 422, "invalid_password"),
        ("x" * 1025, 422, "validation_error"),
        ("", 422, "invalid_password"),
    ],
)
def test_password_rules_are_a_clear_422(client, account, password, status, error):
    r = client.put("/v1/me/password", headers=account.headers, json={"new_password": password})
    assert r.status_code == status and code(r) == error, r.text
    r = client.put("/v1/me/password", headers=account.headers, json={"new_password": 12345678901})
    assert r.status_code == 422


def test_login_input_is_checked(client):
    for body in (
        {"email": "a@example.com"},
        {"email": "not-an-email", "password": "x" * 12},
        {"email": "a@example.com", "password": "x" * 2000},
        {"email": "a@example.com", "password": None},
        {"email": "a@example.com", "password": "x" * 12, "extra": 1},
    ):
        assert client.post("/v1/auth/login", json=body).status_code == 422, body
    # A NUL byte in a login password is a wrong password, not a 500.
    r = client.post("/v1/auth/login", json={"email": "a@example.com", "password": "a\x00b" * 5})
    assert r.status_code == 401


# =====================================================================================
# email verification
# =====================================================================================
def test_sign_up_mails_a_verification_token(client, mailer, engine):
    account = signup(client)
    [mail] = mailer.sent
    assert mail.to == account.email and "token" not in repr(mail)
    token = mail.data["token"]
    assert token in mail.body  # the link
    assert token not in str(rows(engine, "SELECT * FROM email_verifications"))
    assert client.get("/v1/me", headers=account.headers).json()["email_verified"] is False
    r = client.post("/v1/auth/verify-email", json={"token": token})
    assert r.status_code == 200 and r.json()["email_verified"] is True
    assert client.get("/v1/me", headers=account.headers).json()["email_verified"] is True
    again = client.post("/v1/auth/verify-email", json={"token": token})
    assert again.status_code == 401 and code(again) == "invalid_credentials"
    r = client.post("/v1/me/verification-email", headers=account.headers)
    assert r.status_code == 409 and code(r) == "already_verified"


def test_verification_tokens_expire_and_are_checked(client, mailer, engine):
    account = signup(client)
    token = mailer.sent[-1].data["token"]
    rows(
        engine, "UPDATE email_verifications SET expires_at = created_at + interval '1 microsecond'"
    )
    assert client.post("/v1/auth/verify-email", json={"token": token}).status_code == 401
    assert client.post("/v1/me/verification-email", headers=account.headers).status_code == 202
    fresh = mailer.sent[-1].data["token"]
    assert fresh != token
    for bad in ({"token": ""}, {"token": "a\x00b"}, {"token": "x" * 500}, {}):
        assert client.post("/v1/auth/verify-email", json=bad).status_code == 422, bad
    assert client.post("/v1/auth/verify-email", json={"token": "x" * 40}).status_code == 401
    assert client.post("/v1/auth/verify-email", json={"token": fresh}).status_code == 200


# =====================================================================================
# permissions and inactive accounts
# =====================================================================================
def _revoke(engine: Engine, account: Account, permission: str) -> None:
    # The owner with no actor: an operator's act (admins use PATCH /v1/admin/users/{id}).
    rows(engine, f"UPDATE users SET {permission} = false WHERE id = :u", u=account.user_id)


def test_permissions_are_enforced(client, account, engine, seeded):
    _revoke(engine, account, "can_upload")
    r = make_upload(client, account)
    assert r.status_code == 403 and code(r) == "permission_denied"
    assert r.json()["error"]["details"] == {"permission": "can_upload"}
    _revoke(engine, account, "can_buy")
    package = scalar(engine, "SELECT id FROM credit_packages ORDER BY credits LIMIT 1")
    r = client.post(
        "/v1/credits/purchase", headers=account.headers, json={"package_id": str(package)}
    )
    assert r.status_code == 403 and code(r) == "permission_denied"
    _revoke(engine, account, "can_download")
    r = client.get(f"/v1/models/{uuid.uuid4()}/artifact", headers=account.headers)
    assert r.status_code == 403 and code(r) == "permission_denied"
    # Reading stays allowed.
    assert client.get("/v1/datasets", headers=account.headers).status_code == 200


def test_can_train_is_enforced_on_runs(client, account, engine):
    from api_helpers import runnable_workflow

    workflow = runnable_workflow(client, account, engine)
    give_credits(engine, account.user_id, 100)
    _revoke(engine, account, "can_train")
    r = client.post(f"/v1/workflows/{workflow['id']}/run", headers=account.headers)
    assert r.status_code == 403 and code(r) == "permission_denied"
    assert scalar(engine, "SELECT count(*) FROM jobs") == 0


def make_upload(client: TestClient, account: Account) -> Any:
    from api_helpers import upload

    return upload(client, account)


def test_an_inactive_account_is_refused_everywhere(client, account, engine):
    set_password(client, account)
    token = login(client, account.email)
    rows(engine, "UPDATE users SET is_active = false WHERE id = :u", u=account.user_id)
    for headers in (account.headers, bearer(token)):
        r = client.get("/v1/me", headers=headers)
        assert r.status_code == 403 and code(r) == "account_inactive"
    r = client.post("/v1/auth/login", json={"email": account.email, "password": PASSWORD})
    assert r.status_code == 403 and code(r) == "account_inactive"


# =====================================================================================
# delete, restore, export
# =====================================================================================
def test_delete_me_then_restore(client, account, engine):
    set_password(client, account)
    token = login(client, account.email)
    assert client.delete("/v1/me", headers=bearer(token)).status_code == 204
    for headers in (account.headers, bearer(token)):
        r = client.get("/v1/me", headers=headers)
        assert r.status_code == 401, r.text
    assert code(client.get("/v1/me", headers=account.headers)) == "account_deleted"
    r = client.post("/v1/auth/login", json={"email": account.email, "password": PASSWORD})
    assert r.status_code == 401 and code(r) == "account_deleted"
    r = client.post("/v1/auth/restore", json={"email": account.email, "password": "wrong one!!"})
    assert r.status_code == 401 and code(r) == "invalid_credentials"
    r = client.post("/v1/auth/restore", json={"email": account.email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert client.get("/v1/me", headers=account.headers).status_code == 200  # keys come back
    assert code(client.get("/v1/me", headers=bearer(token))) == "session_revoked"  # sessions don't
    # After 30 days: no restore.
    assert client.delete("/v1/me", headers=account.headers).status_code == 204
    rows(
        engine,
        "UPDATE users SET deleted_at = now() - interval '31 days' WHERE id = :u",
        u=account.user_id,
    )
    r = client.post("/v1/auth/restore", json={"email": account.email, "password": PASSWORD})
    assert r.status_code == 409 and code(r) == "restore_window_expired"


def test_export_is_one_zip_with_records_and_files(client, account, engine):
    set_password(client, account)
    login(client, account.email)
    dataset = make_dataset(client, account)
    give_credits(engine, account.user_id, 7)
    r = client.get("/v1/me/export", headers=account.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    names = set(archive.namelist())
    assert {"records/user.json", "records/api_keys.json", "records/sessions.json"} <= names
    assert {"records/datasets.json", "records/credit_transactions.json"} <= names
    [user] = json.loads(archive.read("records/user.json"))
    assert user["id"] == str(account.user_id) and "password_hash" not in user
    [key] = json.loads(archive.read("records/api_keys.json"))
    assert "key_hash" not in key
    [session] = json.loads(archive.read("records/sessions.json"))
    assert "token_hash" not in session
    [ledger] = json.loads(archive.read("records/credit_transactions.json"))
    assert ledger["amount"] == 7
    version_id = dataset["version"]["id"]
    [data_file] = [n for n in names if n.startswith(f"files/uploads/{version_id}/")]
    assert archive.read(data_file).startswith(b"sepal_length")
    # Nobody else's records.
    other = signup(client)
    theirs = zipfile.ZipFile(io.BytesIO(client.get("/v1/me/export", headers=other.headers).content))
    assert json.loads(theirs.read("records/datasets.json")) == []


# =====================================================================================
# abuse limits
# =====================================================================================
def test_sign_up_is_limited_per_address(engine, api_settings):
    api_settings.identity = Identity(signup_per_ip=3, login_per_ip=1000)
    with TestClient(make_app(engine, api_settings)) as client:
        for _ in range(3):
            signup(client)
        r = client.post("/v1/users", json={"email": "fourth@example.com"})
        assert r.status_code == 429 and code(r) == "too_many_requests"
        assert 1 <= int(r.headers["Retry-After"]) <= 3600
        assert scalar(engine, "SELECT count(*) FROM users WHERE email = 'fourth@example.com'") == 0


def test_login_lockout_after_failures(engine, api_settings):
    api_settings.identity = Identity(lockout_failures=3, lockout_s=120, login_per_ip=1000)
    with TestClient(make_app(engine, api_settings)) as client:
        account = signup(client)
        set_password(client, account)
        for _ in range(3):
            r = client.post(
                "/v1/auth/login", json={"email": account.email, "password": "bad guess!!"}
            )
            assert r.status_code == 401
        r = client.post("/v1/auth/login", json={"email": account.email, "password": PASSWORD})
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 120
        # The lock ends: then the right password works.
        rows(engine, "UPDATE rate_limits SET blocked_until = now() WHERE key LIKE 'login-fail:%'")
        login(client, account.email)


def test_a_lockout_spares_the_owners_keys_sessions_and_other_addresses(engine, api_settings):
    """Someone guessing from one address locks out that address only; past the
    per-email count, new addresses are slowed (429 with a short Retry-After), never
    the owner's keys and sessions."""
    api_settings.identity = Identity(
        lockout_failures=2, login_per_ip=1000, slow_failures=4, slow_interval_s=30
    )
    app = make_app(engine, api_settings)
    with (
        TestClient(app, client=("203.0.113.20", 50000)) as owner,
        TestClient(app, client=("198.51.100.1", 50000)) as guesser,
        TestClient(app, client=("198.51.100.2", 50000)) as guesser2,
        TestClient(app, client=("192.0.2.9", 50000)) as newcomer,
    ):
        account = signup(owner)
        set_password(owner, account)
        session_token = login(owner, account.email)
        for client in (guesser, guesser, guesser2, guesser2):
            r = client.post(
                "/v1/auth/login", json={"email": account.email, "password": "bad guess!!"}
            )
            assert r.status_code == 401
        # The guessers' addresses are locked out, even with the right password.
        r = guesser.post("/v1/auth/login", json={"email": account.email, "password": PASSWORD})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 30
        # Four failures: a new address is slowed (one attempt per 30 s), not locked.
        r = newcomer.post(
            "/v1/auth/login", json={"email": account.email, "password": "bad guess!!"}
        )
        assert r.status_code == 401
        r = newcomer.post("/v1/auth/login", json={"email": account.email, "password": PASSWORD})
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 30
        # The owner's key and session keep working; from where they logged in before,
        # the password does too.
        assert owner.get("/v1/me", headers=account.headers).status_code == 200
        assert owner.get("/v1/me", headers=bearer(session_token)).status_code == 200
        login(owner, account.email)


@pytest.fixture
def two_apps(db_url: Any, api_settings: ApiSettings) -> Iterator[tuple[TestClient, TestClient]]:
    """Two API instances, each with an engine (a pool) of its own: two processes' view."""
    api_settings.identity = Identity(login_per_ip=10, login_window_s=3600)
    engines = [errors.install(create_engine(db_url, pool_size=4)) for _ in range(2)]
    try:
        with (
            TestClient(make_app(engines[0], api_settings)) as a,
            TestClient(make_app(engines[1], api_settings)) as b,
        ):
            yield a, b
    finally:
        for e in engines:
            e.dispose()


def test_the_login_limit_holds_across_two_api_instances(two_apps):
    """30 logins from one address, concurrently through two instances: exactly 10 are
    looked at (401, wrong password) and 20 refused (429): the count is the database's."""
    a, b = two_apps
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def attempt(client: TestClient, n: int) -> None:
        barrier.wait()
        for i in range(5):
            r = client.post(
                "/v1/auth/login", json={"email": f"u{n}-{i}@example.com", "password": "x" * 12}
            )
            with lock:
                statuses.append(r.status_code)

    threads = [threading.Thread(target=attempt, args=(c, n)) for n, c in enumerate([a, b] * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(statuses) == 30
    assert statuses.count(401) == 10 and statuses.count(429) == 20


def test_the_login_limit_holds_across_two_uvicorn_processes(db_url, tmp_path):
    """The same, with two real API processes (uvicorn) on the test's database."""
    import os

    import httpx

    env = {
        **os.environ,
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "AUTOML_DATA_DIR": str(tmp_path),
        "IDENTITY__LOGIN_PER_IP": "6",
        "IDENTITY__LOGIN_WINDOW_S": "3600",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_KIB": "8",
        "ARGON2_PARALLELISM": "1",
    }
    with start_api_processes(env) as (ports, _):
        statuses: list[int] = []
        lock = threading.Lock()

        def attempt(port: int, n: int) -> None:
            for i in range(3):
                r = httpx.post(
                    f"http://127.0.0.1:{port}/v1/auth/login",
                    json={"email": f"p{n}-{i}@example.com", "password": "x" * 12},
                    timeout=60,
                )
                with lock:
                    statuses.append(r.status_code)

        threads = [threading.Thread(target=attempt, args=(ports[n % 2], n)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(statuses) == [401] * 6 + [429] * 6
