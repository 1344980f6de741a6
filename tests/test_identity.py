"""Issue 17, identity: the database's rules (sql/triggers/identity.sql, ML100-ML103)
through raw SQL, the ORM and the apps' least-privilege role; database/identity.py's
sessions, passwords and abuse counters, the latter concurrently."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import audit, errors, identity
from database.lifecycle import LocalFileRemover, purge
from database.models import UserRole, UserTier

from factories import make_user, scalar


def as_actor(eng: Engine, actor: uuid.UUID | None, statement: str, **params: Any) -> list[Any]:
    """Run ``statement`` in one transaction whose actor is ``actor`` (none: unset)."""
    with eng.begin() as conn:
        if actor is not None:
            conn.execute(text("SELECT set_config('automl.actor', :a, true)"), {"a": str(actor)})
        result = conn.execute(text(statement), params)
        return list(result) if result.returns_rows else []


@pytest.fixture
def admin(sql: Any) -> uuid.UUID:
    return make_user(sql, role="admin")


# =====================================================================================
# who may change role, permissions, activity, tier
# =====================================================================================
PRIVILEGE_UPDATES = [
    "UPDATE users SET role = 'admin' WHERE id = :u",
    "UPDATE users SET can_train = false WHERE id = :u",
    "UPDATE users SET is_active = false WHERE id = :u",
]


@pytest.mark.parametrize("statement", PRIVILEGE_UPDATES)
def test_a_user_cannot_change_their_own_privileges_raw_sql(sql, engine, statement):
    user = make_user(sql)
    with pytest.raises(errors.OwnPrivileges):
        as_actor(engine, user, statement, u=user)
    # Even an admin: never their own account.
    admin = make_user(sql, role="admin")
    with pytest.raises(errors.OwnPrivileges):
        as_actor(engine, admin, statement.replace("'admin'", "'user'"), u=admin)
    assert scalar(sql, "SELECT role::text FROM users WHERE id = :u", u=user) == "user"


@pytest.mark.parametrize("statement", PRIVILEGE_UPDATES)
def test_only_an_active_admin_changes_another_user(sql, engine, admin, statement):
    user, other = make_user(sql), make_user(sql)
    with pytest.raises(errors.AdminRequired):
        as_actor(engine, other, statement, u=user)
    as_actor(engine, admin, statement, u=user)  # an admin may
    # A deactivated or deleted admin may not.
    user2 = make_user(sql)
    sql("UPDATE users SET is_active = false WHERE id = :u", u=admin)  # the owner, no actor
    with pytest.raises(errors.AdminRequired):
        as_actor(engine, admin, statement, u=user2)


def test_the_owner_without_an_actor_may(sql, engine):
    """The operator's CLI (automl-db users promote) and migrations set no actor."""
    user = make_user(sql)
    as_actor(engine, None, "UPDATE users SET role = 'admin', can_buy = false WHERE id = :u", u=user)
    assert sql("SELECT role::text, can_buy FROM users WHERE id = :u", u=user)[0] == ("admin", False)


def test_other_columns_need_no_actor(sql, app_engine):
    user = make_user(sql)
    as_actor(app_engine, None, "UPDATE users SET full_name = 'x' WHERE id = :u", u=user)
    # A statement naming the column without changing it passes too.
    as_actor(app_engine, None, "UPDATE users SET role = role WHERE id = :u", u=user)


def test_the_apps_role_without_an_actor_is_refused(sql, app_engine, admin):
    user = make_user(sql)
    for statement in PRIVILEGE_UPDATES:
        with pytest.raises(errors.ActorRequired):
            as_actor(app_engine, None, statement, u=user)
    # An actor that is no uuid.
    with pytest.raises(errors.ActorRequired), app_engine.begin() as conn:
        conn.execute(text("SELECT set_config('automl.actor', 'root', true)"))
        conn.execute(text("UPDATE users SET role = 'admin' WHERE id = :u"), {"u": user})


def test_the_apps_role_with_the_user_as_actor_is_refused(sql, app_engine, admin):
    user = make_user(sql)
    with pytest.raises(errors.OwnPrivileges):
        as_actor(app_engine, user, "UPDATE users SET role = 'admin' WHERE id = :u", u=user)
    as_actor(app_engine, admin, "UPDATE users SET can_upload = false WHERE id = :u", u=user)
    assert scalar(sql, "SELECT can_upload FROM users WHERE id = :u", u=user) is False


def test_the_apps_role_cannot_insert_privileges_or_write_the_tier(sql, app_engine, admin):
    for statement in (
        "INSERT INTO users (email, role) VALUES ('boss@example.com', 'admin')",
        "INSERT INTO users (email, can_buy) VALUES ('b@example.com', false)",
        "INSERT INTO users (email, is_active) VALUES ('c@example.com', false)",
    ):
        with pytest.raises(errors.PermissionDenied):
            as_actor(app_engine, admin, statement)
    user = make_user(sql)
    with pytest.raises(errors.PermissionDenied):
        as_actor(app_engine, admin, "UPDATE users SET tier = 'enterprise' WHERE id = :u", u=user)
    # An admin's way: admin_set_tier, which checks the actor.
    as_actor(app_engine, admin, "SELECT admin_set_tier(:u, 'pro')", u=user)
    assert scalar(sql, "SELECT tier::text FROM users WHERE id = :u", u=user) == "pro"
    with pytest.raises(errors.OwnPrivileges):
        as_actor(app_engine, user, "SELECT admin_set_tier(:u, 'enterprise')", u=user)
    with pytest.raises(errors.ActorRequired):
        as_actor(app_engine, None, "SELECT admin_set_tier(:u, 'enterprise')", u=user)
    with pytest.raises(errors.AdminRequired):
        as_actor(app_engine, make_user(sql), "SELECT admin_set_tier(:u, 'free')", u=user)
    assert scalar(sql, "SELECT tier::text FROM users WHERE id = :u", u=user) == "pro"


def test_admin_credit_adjust_checks_the_actor(sql, app_engine, admin):
    user = make_user(sql)
    call = "SELECT amount, actor FROM admin_credit_adjust(:u, 50, 'goodwill', :k)"
    with pytest.raises(errors.ActorRequired):
        as_actor(app_engine, None, call, u=user, k="k1")
    with pytest.raises(errors.OwnPrivileges):
        as_actor(app_engine, user, call, u=user, k="k1")
    with pytest.raises(errors.AdminRequired):
        as_actor(app_engine, make_user(sql), call, u=user, k="k1")
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user) == 0
    rows = as_actor(app_engine, admin, call, u=user, k="k1")
    assert rows == [(50, f"admin:{admin}")]
    # The operators' function stays theirs.
    with pytest.raises(errors.PermissionDenied):
        as_actor(app_engine, admin, "SELECT credit_adjust(:u, 5, 'x', 'y', NULL)", u=user)


def test_orm_update_user_is_checked_by_the_database(sql, session_factory, admin):
    user = make_user(sql)
    with session_factory() as s:
        audit.set_actor(s, user_id=user)
        with pytest.raises(errors.OwnPrivileges):
            identity.update_user(s, user, role=UserRole.ADMIN)
    with session_factory() as s:
        audit.set_actor(s, user_id=admin)
        with pytest.raises(errors.OwnPrivileges):
            identity.update_user(s, admin, tier=UserTier.ENTERPRISE)
    with session_factory() as s:
        audit.set_actor(s, user_id=admin)
        s.commit()  # the actor outlives a commit: the next transaction has it too
        found = identity.update_user(
            s, user, tier=UserTier.PRO, permissions={"can_train": False}, is_active=False
        )
        s.commit()
        assert (found.tier, found.can_train, found.is_active) == (UserTier.PRO, False, False)


def test_set_role_is_the_operators(sql, session_factory, app_engine):
    user = make_user(sql, email="first@example.com")
    with session_factory() as s:
        assert identity.set_role(s, "First@example.com", UserRole.ADMIN).role == UserRole.ADMIN
    with Session(app_engine) as s, pytest.raises(errors.ActorRequired):
        identity.set_role(s, "first@example.com", UserRole.USER)
    with session_factory() as s, pytest.raises(errors.UserNotFound):
        identity.set_role(s, "nobody@example.com", UserRole.ADMIN)
    assert scalar(sql, "SELECT role::text FROM users WHERE id = :u", u=user) == "admin"


def test_password_hash_must_be_argon2id(sql):
    user = make_user(sql)
    with pytest.raises(errors.InvalidValue):
        sql("UPDATE users SET password_hash = 'plaintext' WHERE id = :u", u=user)
    sql(
        "UPDATE users SET password_hash = :h WHERE id = :u",
        u=user,
        h=identity.hash_password("x" * 12),
    )


# =====================================================================================
# sessions
# =====================================================================================
def _session_row(sql: Any, user: uuid.UUID) -> uuid.UUID:
    return sql(
        "INSERT INTO user_sessions (user_id, token_hash, expires_at)"
        " VALUES (:u, :h, now() + interval '1 day') RETURNING id",
        u=user,
        h=identity.hash_token(uuid.uuid4().hex),
    )[0][0]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE user_sessions SET revoked_at = NULL WHERE id = :s",
        "UPDATE user_sessions SET revoked_at = now() + interval '1 hour' WHERE id = :s",
        "UPDATE user_sessions SET token_hash = repeat('a', 64) WHERE id = :s",
        "UPDATE user_sessions SET expires_at = expires_at + interval '1 day' WHERE id = :s",
        "UPDATE user_sessions SET created_at = now() - interval '1 day' WHERE id = :s",
    ],
)
def test_a_session_keeps_its_token_and_its_revocation(sql, app_engine, statement):
    user = make_user(sql)
    sid = _session_row(sql, user)
    sql("UPDATE user_sessions SET revoked_at = now() WHERE id = :s", s=sid)
    with pytest.raises(errors.SessionImmutable):
        sql(statement, s=sid)
    with pytest.raises(errors.SessionImmutable):
        as_actor(app_engine, user, statement, s=sid)


def test_session_moved_to_another_user_is_refused(sql):
    user, other = make_user(sql), make_user(sql)
    sid = _session_row(sql, user)
    with pytest.raises(errors.SessionImmutable):
        sql("UPDATE user_sessions SET user_id = :o WHERE id = :s", o=other, s=sid)
    sql("UPDATE user_sessions SET expires_at = now() + interval '1 hour' WHERE id = :s", s=sid)


def test_login_sessions_and_password_change(sql, session_factory):
    user = make_user(sql, email="pw@example.com")
    with session_factory() as s:
        with pytest.raises(errors.AuthenticationFailed):  # no password yet
            identity.login(s, "pw@example.com", "whatever-long")
        assert identity.change_password(s, user, "first password") == 0
        token, row = identity.login(s, "PW@example.com ", "first password", ip="10.0.0.1")
        found, who = identity.authenticate_session(s, token)
        assert (found.id, who.id) == (row.id, user)
        token2, row2 = identity.login(s, "pw@example.com", "first password")
        with pytest.raises(errors.PasswordRequired):
            identity.change_password(s, user, "second password")
        with pytest.raises(errors.PasswordRequired):
            identity.change_password(s, user, "second password", "wrong password")
        assert (
            identity.change_password(
                s, user, "second password", "first password", keep_session=row2.id
            )
            == 1
        )
        with pytest.raises(errors.SessionRefused) as refused:
            identity.authenticate_session(s, token)
        assert refused.value.code == "session_revoked"
        identity.authenticate_session(s, token2)
        sql(
            "UPDATE user_sessions SET expires_at = created_at + interval '1 microsecond'"
            " WHERE id = :s",
            s=row2.id,
        )
        with pytest.raises(errors.SessionRefused) as refused:
            identity.authenticate_session(s, token2)
        assert refused.value.code == "session_expired"
        with pytest.raises(errors.SessionRefused):
            identity.authenticate_session(s, "ams_" + "x" * 43)
    stored = scalar(sql, "SELECT password_hash FROM users WHERE id = :u", u=user)
    assert stored.startswith("$argon2id$") and "second password" not in stored


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short", "at least"),
        ("x" * 1025, "at most"),
        ("long enough\x00", "NUL"),
        (" " * 12, "spaces"),
    ],
)
def test_password_rules(password, message):
    with pytest.raises(errors.InvalidPassword, match=message):
        identity.hash_password(password)


def test_the_hash_never_shows(sql, session_factory):
    user = make_user(sql)
    with session_factory() as s:
        identity.change_password(s, user, "a secret password")
    with session_factory() as s:
        from database.models import User

        obj = s.get(User, user)
        assert obj is not None
        assert "argon2" not in repr(obj) and "password_hash" not in obj.__dict__


# =====================================================================================
# abuse counters: one row, every process
# =====================================================================================
def test_the_counter_holds_under_concurrent_hits(engine):
    """16 threads, each its own connection, hit one key 5 times: exactly the limit passes."""
    limit, threads, each = 23, 16, 5
    allowed: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        for _ in range(each):
            with Session(engine) as s:
                retry = identity.hit(s, "login-ip:203.0.113.9", limit, 3600)
                s.commit()
            if not retry:
                with lock:
                    allowed.append(1)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert len(allowed) == limit
    with engine.begin() as conn:
        count = conn.execute(
            text("SELECT count FROM rate_limits WHERE key = 'login-ip:203.0.113.9'")
        )
        assert count.scalar_one() == threads * each


def test_a_window_that_ended_starts_again(sql, engine):
    with Session(engine) as s:
        assert identity.hit(s, "k", 1, 60) == 0
        assert identity.hit(s, "k", 1, 60) > 0
        s.commit()
    sql("UPDATE rate_limits SET window_started_at = now() - interval '61 seconds' WHERE key = 'k'")
    with Session(engine) as s:
        assert identity.hit(s, "k", 1, 60) == 0
        s.commit()


def test_lockout_after_failures(sql, session_factory):
    make_user(sql, email="lock@example.com")
    limits = identity.AbuseLimits(lockout_failures=3, lockout_s=600)
    with session_factory() as s:
        identity.change_password(
            s,
            scalar(sql, "SELECT id FROM users WHERE email = 'lock@example.com'"),
            "right password",
        )
        for _ in range(3):
            with pytest.raises(errors.AuthenticationFailed):
                identity.login(s, "lock@example.com", "wrong password", limits=limits)
        with pytest.raises(errors.AccountLocked) as locked:
            identity.login(s, "lock@example.com", "right password", limits=limits)
        assert 590 <= locked.value.retry_after <= 600


# =====================================================================================
# the account's life: delete, restore, purge
# =====================================================================================
def test_delete_revokes_sessions_and_purge_removes_them(sql, session_factory, engine, tmp_path):
    user = make_user(sql, email="gone@example.com")
    with session_factory() as s:
        identity.change_password(s, user, "my password!")
        token, row = identity.login(s, "gone@example.com", "my password!")
        identity.delete_account(s, user)
        with pytest.raises(errors.SessionRefused):
            identity.authenticate_session(s, token)
        with pytest.raises(errors.AccountDeleted):
            identity.login(s, "gone@example.com", "my password!")
        restored = identity.restore_account(s, "gone@example.com", "my password!")
        assert not restored.is_deleted
        identity.delete_account(s, user)
    sql("UPDATE users SET deleted_at = now() - interval '31 days' WHERE id = :u", u=user)
    with session_factory() as s, pytest.raises(errors.RestoreWindowExpired):
        identity.restore_account(s, "gone@example.com", "my password!")
    report = purge(engine, remove_file=LocalFileRemover(tmp_path))
    assert report.users_purged == 1 and report.rows["user_sessions"] == 1
    assert scalar(sql, "SELECT count(*) FROM user_sessions WHERE user_id = :u", u=user) == 0
    assert scalar(sql, "SELECT password_hash FROM users WHERE id = :u", u=user) is None


def test_cli_users_promote_and_demote(sql, db_url, monkeypatch, capsys):
    """The first admin: ``automl-db users promote EMAIL`` (an operator's act)."""
    from database import cli
    from database.config import get_settings

    user = make_user(sql, email="first-admin@example.com")
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        assert cli.main(["users", "promote", "First-Admin@example.com"]) == 0
        assert "is now admin" in capsys.readouterr().out
        assert scalar(sql, "SELECT role::text FROM users WHERE id = :u", u=user) == "admin"
        assert cli.main(["users", "demote", "first-admin@example.com"]) == 0
        assert scalar(sql, "SELECT role::text FROM users WHERE id = :u", u=user) == "user"
        assert cli.main(["users", "promote", "nobody@example.com"]) == 1
        assert "no user" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
