"""Accounts, keys, sessions, the audit trail, administration, tutorials and health,
through ``automl.Client`` against the real API."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

import automl
from api.mail import MemoryMailer
from database.seed import seed

from client_helpers import new_user, user_id


def test_sign_up_me_and_api_keys(anon: automl.Client, http: TestClient) -> None:
    signed = anon.users.create("keys@example.com", full_name="Keys")
    assert signed.api_key.key.startswith("aml_")
    client = automl.Client(http_client=http, api_key=signed.api_key.key)
    me = client.me.get()
    assert me.email == "keys@example.com" and me.id == signed.user.id
    key = signed.api_key.key
    assert key not in repr(client) and key[4:12] not in repr(client.config)

    made = client.api_keys.create("ci", scopes=["read"], rate_limit_per_minute=100)
    assert made.key.startswith("aml_") and made.scopes == ["read"]
    changed = client.api_keys.update_quotas(made, rate_limit_per_minute=5, monthly_row_quota=10)
    assert changed.rate_limit_per_minute == 5 and changed.monthly_row_quota == 10
    ids = [k.id for k in client.api_keys.list()]
    assert made.id in ids and signed.api_key.id in ids
    # the read-only key may read but not write
    reader = automl.Client(http_client=http, api_key=made.key)
    assert reader.me.get().id == me.id
    with pytest.raises(automl.Forbidden) as refused:
        reader.api_keys.create("nope")
    assert refused.value.status == 403 and refused.value.code
    client.api_keys.revoke(made.id)
    with pytest.raises(automl.Unauthorized) as unauth:
        reader.me.get()
    assert unauth.value.status == 401


def test_errors_carry_the_apis_code_message_details_and_status(
    client: automl.Client, anon: automl.Client
) -> None:
    with pytest.raises(automl.Unauthorized) as e401:
        anon.me.get()
    assert e401.value.code == "unauthenticated" and e401.value.status == 401
    with pytest.raises(automl.NotFound) as e404:
        client.datasets.get("00000000-0000-4000-8000-000000000001")
    assert (e404.value.status, e404.value.code) == (404, "not_found")
    assert "not found" in e404.value.message and e404.value.request_id
    with pytest.raises(automl.ValidationError) as e422:
        client.datasets.get("not-a-uuid")
    assert e422.value.code == "validation_error" and e422.value.errors
    assert e422.value.errors[0]["loc"][-1] == "dataset_id"
    with pytest.raises(automl.ValidationError) as cursor:
        client.jobs.list(cursor="%%%").page()
    assert cursor.value.code == "invalid_cursor"
    assert isinstance(e404.value, automl.ApiError) and isinstance(e404.value, automl.AutomlError)


def test_login_sessions_password_logout(
    client: automl.Client, http: TestClient, password: str
) -> None:
    changed = client.me.change_password(password)
    assert changed is not None
    email = client.me.get().email
    assert email is not None
    browser = automl.Client(http_client=http)
    login = browser.login(email, password)
    assert login.token.startswith("ams_") and browser.config.token == login.token
    assert login.token[4:12] not in repr(browser) + repr(browser.config)
    assert browser.me.get().id == user_id(client)
    sessions = browser.sessions.list().all()
    assert [s.id for s in sessions] == [login.session_id]
    # a second session, revoked by the first
    second = automl.Client(http_client=http)
    other = second.auth.login(email, password)
    second.use_token(other.token)
    browser.sessions.revoke(other.session_id)
    with pytest.raises(automl.Unauthorized):
        second.me.get()
    browser.auth.logout()
    with pytest.raises(automl.Unauthorized):
        browser.me.get()
    with pytest.raises(automl.Unauthorized) as wrong:
        automl.Client(http_client=http).auth.login(email, "wrong password!")
    assert wrong.value.code == "invalid_credentials"


def test_email_verification(mailer: MemoryMailer, http: TestClient) -> None:
    client = new_user(http)
    client.me.resend_verification()
    assert len(mailer.sent) == 2
    token = mailer.sent[-1].data["token"]
    verified = client.auth.verify_email(token)
    assert verified.email_verified is True
    assert client.me.get().email_verified is True
    with pytest.raises(automl.Unauthorized):
        client.auth.verify_email(token)  # used
    with pytest.raises(automl.Conflict) as again:
        client.me.resend_verification()
    assert again.value.code == "already_verified"


def test_export_delete_restore(client: automl.Client, tmp_path: Path, password: str) -> None:
    client.me.change_password(password)
    data = client.me.export()
    assert zipfile.ZipFile(io.BytesIO(data)).namelist()
    saved = client.me.export(tmp_path / "me.zip")
    assert saved == tmp_path / "me.zip" and zipfile.is_zipfile(saved)
    email = client.me.get().email
    assert email is not None
    client.me.delete()
    with pytest.raises(automl.Unauthorized) as deleted:
        client.me.get()
    assert deleted.value.code == "account_deleted"
    restored = client.auth.restore(email, password)
    assert restored.id == user_id(client)
    assert client.me.get().id == restored.id


def test_admin_routes(admin: automl.Client, client: automl.Client) -> None:
    target = user_id(client)
    listed = {u.id for u in admin.admin.users(limit=1)}  # follows the cursor past page 1
    assert {target, user_id(admin)} <= listed
    assert admin.admin.get_user(target).id == target
    changed = admin.admin.update_user(target, can_train=False)
    assert changed.can_train is False
    adjusted = admin.admin.adjust_credits(target, 7, "goodwill", "adj-1")
    assert adjusted is not None
    assert client.credits.balance().balance == 7
    with pytest.raises(automl.Forbidden) as refused:
        client.admin.users().page()
    assert refused.value.code == "admin_required"
    actions = {e.action for e in admin.admin.audit_events(entity_id=target)}
    assert actions
    assert admin.admin.audit_events(actor_user_id=user_id(admin), action="user.").all()
    assert admin.admin.reconciliation_runs().all() == []
    mine = client.audit_events.list(action="api_key.").all()
    assert all(e.action.startswith("api_key.") for e in mine)
    assert client.audit_events.list().all()


def test_tutorials_and_health(client: automl.Client, anon: automl.Client, engine: Engine) -> None:
    seed(engine)
    tutorials = client.tutorials.list().all()
    assert tutorials
    progress = client.tutorials.set_progress(tutorials[0], 2, completed_steps=[1])
    assert progress.current_step == 2 and progress.completed_steps == [1]
    assert anon.health.live().status == "ok"
    try:
        ready = anon.health.ready()
        assert ready.database is True
    except automl.ServerError as exc:  # no worker is alive in the tests: 503, said so
        assert exc.status == 503
