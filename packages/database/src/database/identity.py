"""Identity: passwords, sessions, email verification, roles and permissions, abuse
limits, an admin's acts, and an account's deletion, restore and export (issue 17).

The rules the database enforces are in ``sql/triggers/identity.sql``: a user never
changes their own role, permissions, activity or tier (ML100), only an active admin
changes another's (ML101), and the apps' role must name the actor (ML102,
the user field of ``automl.actor``, set by :func:`database.audit.set_actor`); a session's token,
owner and revocation stay as written (ML103). This module is the rest; the API's
routers call it and nothing else does these things.

- **Passwords**: argon2id (argon2-cffi's defaults: RFC 9106's second recommendation,
  64 MiB, 3 passes), 10 to 1024 characters, no NUL. A hash is never logged and never
  in a repr (``users.password_hash`` is a deferred column: loaded only here).
- **Sessions**: ``ams_`` + 43 URL-safe characters (256 bits), the SHA-256 stored, so
  a session token is told from an API key (``aml_``) by its prefix. A session lives
  ``ttl`` (default 7 days), is refused at once when revoked (logout, a password
  change revoking the others, the account deleted) or expired, and records
  ``last_seen_at`` at most once a minute.
- **Abuse limits** (:func:`hit`): one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``
  on ``rate_limits`` counts an attempt in a fixed window; every API process counts in
  the same row. Sign-ups and logins per IP. Failed logins (by email, known or not, so
  the answer does not tell which emails exist) are counted twice:
  - per (email, address): after ``lockout_failures`` failures within
    ``lockout_window_s`` that address's logins to that account are refused for
    ``lockout_s`` (a lockout: someone guessing from one place stops there, and locks
    out no one else);
  - per email, from every address: past ``slow_failures`` within ``slow_window_s``
    (a guess spread over many addresses), the account's logins from addresses it
    has not logged in from within ``known_address_days`` are slowed, not refused: at
    most one attempt each ``slow_interval_s`` among all of them. Its owner, from an
    address they used, is not slowed at all.
  A success clears both counts. Nothing here touches API keys or sessions: a user
  whose password logins are locked or slowed keeps using their keys and sessions.
- The functions commit what must last whatever the caller does next (an attempt
  counted, a failure recorded), and say so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from database import audit, errors, lifecycle
from database._tx import atomic
from database.models import (
    CreditTransaction,
    EmailVerification,
    User,
    UserRole,
    UserSession,
    UserTier,
)
from database.models.user import PERMISSION_COLUMNS

__all__ = [
    "PERMISSIONS",
    "SESSION_PREFIX",
    "AbuseLimits",
    "admin_adjust",
    "authenticate_session",
    "change_password",
    "configure_hasher",
    "delete_account",
    "export_records",
    "hash_password",
    "hit",
    "issue_verification",
    "login",
    "record_signup",
    "restore_account",
    "revoke_session",
    "set_role",
    "update_user",
    "verify_email",
    "verify_password",
]

PERMISSIONS: tuple[str, ...] = PERMISSION_COLUMNS
SESSION_PREFIX = "ams_"
SESSION_TTL = dt.timedelta(days=7)
VERIFICATION_TTL = dt.timedelta(hours=48)
#: A session's last_seen_at is written at most this often.
LAST_SEEN_RESOLUTION_S = 60
PASSWORD_MIN_LENGTH = 10
PASSWORD_MAX_LENGTH = 1024
#: Longer tokens are refused before any lookup.
MAX_TOKEN_LENGTH = 200


# --- passwords ------------------------------------------------------------------------------
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


#: argon2id's cost: argon2-cffi's defaults (RFC 9106's second recommendation) unless
#: ARGON2_TIME_COST, ARGON2_MEMORY_KIB, ARGON2_PARALLELISM say otherwise (OWASP's
#: floor is 2 passes of 19 MiB with 1 lane). Hashes keep their own parameters.
_hasher = PasswordHasher(
    time_cost=_env_int("ARGON2_TIME_COST", 3),
    memory_cost=_env_int("ARGON2_MEMORY_KIB", 65536),
    parallelism=_env_int("ARGON2_PARALLELISM", 4),
)
# Verified when an email has no account or no password, so that path costs the same.
_dummy_hash: str | None = None


def configure_hasher(*, time_cost: int = 3, memory_cost: int = 65536, parallelism: int = 4) -> None:
    """Set argon2id's cost (tests lower it; production keeps the defaults). Existing
    hashes keep verifying: the parameters are in each hash."""
    global _hasher, _dummy_hash
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
    _dummy_hash = None


def check_password_rules(password: str) -> None:
    """Raises ``InvalidPassword`` naming the rule broken."""
    if not isinstance(password, str):
        raise errors.InvalidPassword("a password is text")
    if "\x00" in password:
        raise errors.InvalidPassword("a password may not contain a NUL character")
    if len(password) < PASSWORD_MIN_LENGTH:
        raise errors.InvalidPassword(f"a password has at least {PASSWORD_MIN_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise errors.InvalidPassword(f"a password has at most {PASSWORD_MAX_LENGTH} characters")
    if not password.strip():
        raise errors.InvalidPassword("a password is not only spaces")


def hash_password(password: str) -> str:
    check_password_rules(password)
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; without a hash a dummy is checked (same cost)."""
    global _dummy_hash
    if not isinstance(password, str) or len(password) > PASSWORD_MAX_LENGTH:
        return False
    if password_hash is None:
        if _dummy_hash is None:
            _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
        with contextlib.suppress(VerificationError, InvalidHashError):
            _hasher.verify(_dummy_hash, password)
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now(session: Session) -> dt.datetime:
    value = session.execute(select(func.now())).scalar_one()
    assert isinstance(value, dt.datetime)
    return value


# --- abuse limits ---------------------------------------------------------------------------
@dataclass(frozen=True)
class AbuseLimits:
    signup_per_ip: int = 20
    signup_window_s: int = 3600
    login_per_ip: int = 60
    login_window_s: int = 300
    lockout_failures: int = 5
    lockout_window_s: int = 900
    lockout_s: int = 900
    slow_failures: int = 20
    slow_window_s: int = 900
    slow_interval_s: int = 10
    known_address_days: int = 90


_HIT = text(
    "INSERT INTO rate_limits AS r (key, window_started_at, count) VALUES (:key, now(), 1)"
    " ON CONFLICT (key) DO UPDATE SET"
    "  count = CASE WHEN r.window_started_at <= now() - make_interval(secs => :window)"
    "          THEN 1 ELSE r.count + 1 END,"
    "  window_started_at = CASE WHEN r.window_started_at <= now() - make_interval(secs => :window)"
    "          THEN now() ELSE r.window_started_at END"
    " RETURNING r.count,"
    "  ceil(extract(epoch FROM r.window_started_at + make_interval(secs => :window) - now()))::int"
    "  AS retry_after"
)


def hit(session: Session, key: str, limit: int, window_s: int) -> int:
    """Count one attempt under ``key``; 0 when it is within ``limit`` per ``window_s``,
    else the seconds until the window ends (the ``Retry-After``). Runs in the
    session's transaction: the caller commits (the attempt counts even when refused)."""
    count, retry_after = session.execute(_HIT, {"key": key[:400], "window": window_s}).one()
    return 0 if count <= limit else max(1, int(retry_after))


def _blocked(session: Session, key: str) -> int:
    """Seconds left of a lockout of ``key`` (0: none)."""
    left = session.execute(
        text(
            "SELECT ceil(extract(epoch FROM blocked_until - now()))::int FROM rate_limits"
            " WHERE key = :key AND blocked_until > now()"
        ),
        {"key": key[:400]},
    ).scalar()
    return max(1, int(left)) if left is not None else 0


def _record_failure(session: Session, key: str, limits: AbuseLimits) -> None:
    over = hit(session, key, limits.lockout_failures - 1, limits.lockout_window_s)
    if over:  # this failure is the lockout_failures-th within the window
        session.execute(
            text(
                "UPDATE rate_limits SET blocked_until = now() + make_interval(secs => :s)"
                " WHERE key = :key"
            ),
            {"key": key[:400], "s": limits.lockout_s},
        )


def record_signup(session: Session, ip: str | None, limits: AbuseLimits) -> None:
    """Count a sign-up from ``ip`` and commit; ``AccountLocked`` past the limit."""
    retry = hit(session, f"signup-ip:{ip or '-'}", limits.signup_per_ip, limits.signup_window_s)
    session.commit()
    if retry:
        raise errors.AccountLocked(
            f"too many sign-ups from this address; retry in {retry} s", retry_after=retry
        )


def _fail_key(email: str, ip: str | None) -> str:
    return f"login-fail:{email}|{ip or '-'}"


def _email_key(email: str) -> str:
    return f"login-fail-email:{email}"


def _email_failures(session: Session, email: str, limits: AbuseLimits) -> int:
    """The email's failures, from every address, in the current window."""
    value = session.execute(
        text(
            "SELECT count FROM rate_limits WHERE key = :key"
            " AND window_started_at > now() - make_interval(secs => :window)"
        ),
        {"key": _email_key(email)[:400], "window": limits.slow_window_s},
    ).scalar()
    return int(value or 0)


def _known_address(session: Session, email: str, ip: str | None, limits: AbuseLimits) -> bool:
    """Whether the account of ``email`` logged in from ``ip`` within
    ``known_address_days`` (a session of it was opened from there)."""
    try:
        address = str(ipaddress.ip_address((ip or "").strip()))
    except ValueError:
        return False
    return bool(
        session.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM user_sessions AS s JOIN users AS u"
                " ON u.id = s.user_id WHERE u.email = :email AND s.ip = CAST(:ip AS inet)"
                " AND s.created_at > now() - make_interval(days => :days))"
            ),
            {"email": email, "ip": address, "days": limits.known_address_days},
        ).scalar()
    )


def _login_guard(session: Session, email: str, ip: str | None, limits: AbuseLimits) -> None:
    retry = hit(session, f"login-ip:{ip or '-'}", limits.login_per_ip, limits.login_window_s)
    session.commit()
    if retry:
        raise errors.AccountLocked(
            f"too many login attempts from this address; retry in {retry} s", retry_after=retry
        )
    locked = _blocked(session, _fail_key(email, ip))
    if locked:
        session.commit()
        raise errors.AccountLocked(
            f"too many failed logins for this account from this address; retry in {locked} s",
            retry_after=locked,
        )
    if _email_failures(session, email, limits) >= limits.slow_failures and not _known_address(
        session, email, ip, limits
    ):
        retry = hit(session, f"login-slow:{email}", 1, limits.slow_interval_s)
        session.commit()
        if retry:
            raise errors.AccountLocked(
                f"logins to this account are slowed after many failures; retry in {retry} s",
                retry_after=retry,
            )
    session.commit()


def _check_password(
    session: Session, email: str, password: str, limits: AbuseLimits, ip: str | None = None
) -> User:
    """The user of ``email`` if ``password`` is theirs; a failure is recorded (and
    committed) and raises ``AuthenticationFailed``."""
    row = session.execute(select(User, User.password_hash).where(User.email == email)).one_or_none()
    user, stored = (row[0], row[1]) if row is not None else (None, None)
    if user is None or not verify_password(stored, password):
        _record_failure(session, _fail_key(email, ip), limits)
        hit(session, _email_key(email), 2**31 - 1, limits.slow_window_s)
        session.commit()
        raise errors.AuthenticationFailed("wrong email or password")
    session.execute(
        text("DELETE FROM rate_limits WHERE key IN (:k, :e)"),
        {"k": _fail_key(email, ip)[:400], "e": _email_key(email)[:400]},
    )
    return user


# --- sessions -------------------------------------------------------------------------------
def _new_session(
    session: Session,
    user_id: uuid.UUID,
    *,
    ip: str | None,
    user_agent: str | None,
    ttl: dt.timedelta,
) -> tuple[str, UserSession]:
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    row = UserSession(
        user_id=user_id,
        token_hash=hash_token(token),
        ip=ip,
        user_agent=None if user_agent is None else user_agent.replace("\x00", "")[:500],
        expires_at=_now(session) + ttl,
    )
    session.add(row)
    session.flush()
    return token, row


def login(
    session: Session,
    email: str,
    password: str,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
    limits: AbuseLimits = AbuseLimits(),
    ttl: dt.timedelta = SESSION_TTL,
    ip_key: str | None = None,
) -> tuple[str, UserSession]:
    """A new session for the user of ``email`` and ``password``: (token, session).
    Commits.

    Refusals: ``AccountLocked`` (an abuse limit: ``retry_after``),
    ``AuthenticationFailed`` (wrong email or password, or no password set: the same
    answer), ``AccountDeleted`` (restore it: :func:`restore_account`),
    ``AccountInactive``. ``ip_key`` is what the per-address limit counts by (default
    ``ip``; the API passes the peer's address as given, an IP or a name).
    """
    email = email.strip().lower()
    _login_guard(session, email, ip_key or ip, limits)
    user = _check_password(session, email, password, limits, ip_key or ip)
    if user.is_deleted:
        session.commit()
        raise errors.AccountDeleted(
            "this account was deleted; POST /v1/auth/restore within 30 days"
        )
    if not user.is_active:
        session.commit()
        raise errors.AccountInactive("this account is deactivated")
    token, row = _new_session(session, user.id, ip=ip, user_agent=user_agent, ttl=ttl)
    session.commit()
    return token, row


#: Authentication's session lookup, built once (``audit.ActorLookup``): the session,
#: its user and the database's clock, the actor named in the same statement.
SESSION_LOOKUP = audit.actor_lookup(
    select(UserSession, User, func.now())
    .join(User, User.id == UserSession.user_id)
    .where(UserSession.token_hash == bindparam("token_hash"))
    .execution_options(populate_existing=True),
    user_id=UserSession.user_id,
    session_id=UserSession.id,
)


def authenticate_session(
    session: Session,
    token: str,
    *,
    request_id: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> tuple[UserSession, User]:
    """The live session of ``token`` and its user; records ``last_seen_at`` (at most
    once a minute; committed). Raises ``SessionRefused`` (code ``invalid_session``,
    ``session_revoked`` or ``session_expired``). The user's state (deleted,
    inactive) is the caller's to check, as for API keys.

    The lookup also names the session's user as the audit actor of the session's
    transaction (``audit.select_as_actor``: one statement), with ``request_id``,
    ``client_ip`` and ``user_agent``; a refusal leaves it to the caller's rollback."""
    if not token.startswith(SESSION_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        raise errors.SessionRefused("unknown session", code="invalid_session")
    row = audit.select_as_actor(
        session,
        SESSION_LOOKUP,
        {"token_hash": hash_token(token)},
        request_id=request_id,
        client_ip=client_ip,
        user_agent=user_agent,
    )
    if row is None:
        raise errors.SessionRefused("unknown session", code="invalid_session")
    found, user, now = row
    if found.revoked_at is not None:
        raise errors.SessionRefused(
            "this session was revoked; log in again", code="session_revoked"
        )
    if found.expires_at <= now:
        raise errors.SessionRefused(
            "this session has expired; log in again", code="session_expired"
        )
    if found.last_seen_at < now - dt.timedelta(seconds=LAST_SEEN_RESOLUTION_S):
        session.execute(
            update(UserSession)
            .where(
                UserSession.id == found.id,
                UserSession.last_seen_at
                < func.now() - dt.timedelta(seconds=LAST_SEEN_RESOLUTION_S),
            )
            .values(last_seen_at=func.now())
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return found, user


def revoke_session(session: Session, user_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    """Revoke one of the user's sessions (idempotent); False when it is not theirs.
    Commits."""
    exists = session.scalar(
        select(UserSession.id).where(UserSession.id == session_id, UserSession.user_id == user_id)
    )
    if exists is None:
        return False
    session.execute(
        update(UserSession)
        .where(UserSession.id == session_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return True


def _revoke_all(session: Session, user_id: uuid.UUID, *, keep: uuid.UUID | None = None) -> int:
    stmt = update(UserSession).where(
        UserSession.user_id == user_id, UserSession.revoked_at.is_(None)
    )
    if keep is not None:
        stmt = stmt.where(UserSession.id != keep)
    result = session.execute(
        stmt.values(revoked_at=func.now()).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def change_password(
    session: Session,
    user_id: uuid.UUID,
    new_password: str,
    current_password: str | None = None,
    *,
    keep_session: uuid.UUID | None = None,
) -> int:
    """Set the user's password. ``current_password`` is required once the user has
    one (``PasswordRequired`` if missing or wrong). Every other session of the user
    is revoked (all but ``keep_session``, the caller's own). Commits; returns the
    number of sessions revoked. ``InvalidPassword`` for a password the rules refuse."""
    new_hash = hash_password(new_password)
    with atomic(session):
        stored = session.execute(
            select(User.password_hash).where(User.id == user_id).with_for_update(key_share=True)
        ).one_or_none()
        if stored is None:
            raise errors.UserNotFound(f"user {user_id} does not exist")
        if stored[0] is not None:
            if current_password is None:
                raise errors.PasswordRequired("current_password is required to change a password")
            if not verify_password(stored[0], current_password):
                raise errors.PasswordRequired("current_password is wrong")
        session.execute(
            update(User)
            .where(User.id == user_id)
            .values(password_hash=new_hash, password_changed_at=func.now())
            .execution_options(synchronize_session=False)
        )
        revoked = _revoke_all(session, user_id, keep=keep_session)
    return revoked


# --- email verification ---------------------------------------------------------------------
def issue_verification(
    session: Session, user_id: uuid.UUID, *, ttl: dt.timedelta = VERIFICATION_TTL
) -> tuple[str, str]:
    """A token proving the user reads their current address: (token, email). In the
    session's transaction (the caller commits, then mails the token)."""
    email = session.scalar(select(User.email).where(User.id == user_id))
    if email is None:
        raise errors.UserNotFound(f"user {user_id} does not exist or has no email")
    token = secrets.token_urlsafe(32)
    session.add(
        EmailVerification(
            user_id=user_id,
            email=email,
            token_hash=hash_token(token),
            expires_at=_now(session) + ttl,
        )
    )
    session.flush()
    return token, email


def verify_email(session: Session, token: str) -> uuid.UUID:
    """Mark the address the token was sent to as verified (once, before it expires,
    while it is still the user's address). Commits; returns the user's id. Anything
    else is ``AuthenticationFailed`` ("invalid or expired token")."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise errors.AuthenticationFailed("invalid or expired token")
    with atomic(session):
        row = session.execute(
            select(EmailVerification.id, EmailVerification.user_id, EmailVerification.email)
            .join(User, User.id == EmailVerification.user_id)
            .where(
                EmailVerification.token_hash == hash_token(token),
                EmailVerification.used_at.is_(None),
                EmailVerification.expires_at > func.now(),
                User.email == EmailVerification.email,
                User.is_deleted.is_(False),
            )
            .with_for_update(of=EmailVerification)
        ).one_or_none()
        if row is None:
            raise errors.AuthenticationFailed("invalid or expired token")
        session.execute(
            update(EmailVerification)
            .where(EmailVerification.id == row.id)
            .values(used_at=func.now())
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(User)
            .where(User.id == row.user_id)
            .values(email_verified=True)
            .execution_options(synchronize_session=False)
        )
    user_id: uuid.UUID = row.user_id
    return user_id


# --- an admin's acts ------------------------------------------------------------------------
def update_user(
    session: Session,
    user_id: uuid.UUID,
    *,
    tier: UserTier | None = None,
    role: UserRole | None = None,
    is_active: bool | None = None,
    permissions: Mapping[str, bool] | None = None,
) -> User:
    """Change another user's tier, role, activity or permissions: the actor of the
    transaction (``database.audit.set_actor``) must be an active admin other than the
    user; the database checks it (``OwnPrivileges``, ``AdminRequired``,
    ``ActorRequired``). One transaction; ``UserNotFound``."""
    values: dict[str, Any] = {}
    if role is not None:
        values["role"] = UserRole(role)
    if is_active is not None:
        values["is_active"] = bool(is_active)
    for name, value in (permissions or {}).items():
        if name not in PERMISSIONS:
            raise errors.InvalidValue(f"unknown permission {name!r}")
        values[name] = bool(value)
    with atomic(session):
        exists = session.scalar(select(User.id).where(User.id == user_id))
        if exists is None:
            raise errors.UserNotFound(f"user {user_id} does not exist")
        if values:
            session.execute(
                update(User)
                .where(User.id == user_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if tier is not None:
            session.execute(
                text("SELECT public.admin_set_tier(:u, CAST(:t AS user_tier))"),
                {"u": user_id, "t": UserTier(tier).value},
            )
    found = session.get(User, user_id, populate_existing=True)
    assert found is not None
    return found


def admin_adjust(
    session: Session,
    user_id: uuid.UUID,
    amount: int,
    reason: str,
    idempotency_key: str,
) -> CreditTransaction:
    """An admin's credit adjustment (the actor of the transaction, checked by
    ``public.admin_credit_adjust``), idempotent on ``idempotency_key``: through
    :func:`database.credits.adjust`'s path (user lock, earlier entry returned)."""
    from database import credits

    return credits.adjust(
        session, user_id, amount, reason, "admin", idempotency_key=idempotency_key, as_admin=True
    )


def set_role(session: Session, email: str, role: UserRole) -> User:
    """The operator's way (``automl-db users promote|demote EMAIL``): no actor, so
    only the schema's owner or an operator's role may (ML102 otherwise). Commits."""
    with atomic(session):
        user_id = session.scalar(select(User.id).where(User.email == email.strip().lower()))
        if user_id is None:
            raise errors.UserNotFound(f"no user with email {email}")
        session.execute(
            update(User)
            .where(User.id == user_id)
            .values(role=UserRole(role))
            .execution_options(synchronize_session=False)
        )
    found = session.get(User, user_id, populate_existing=True)
    assert found is not None
    return found


# --- the account's life ---------------------------------------------------------------------
def delete_account(session: Session, user_id: uuid.UUID) -> User:
    """Soft-delete the account (``lifecycle.soft_delete_user``) and revoke its
    sessions, in one transaction. Its API keys stop working at once (the API refuses
    the keys of a deleted account) and work again after a restore; sessions do not."""
    with atomic(session):
        user = lifecycle.soft_delete_user(session, user_id)
        _revoke_all(session, user_id)
    return user


def restore_account(
    session: Session,
    email: str,
    password: str,
    *,
    ip_key: str | None = None,
    limits: AbuseLimits = AbuseLimits(),
) -> User:
    """Restore a deleted account with its password, within the retention window
    (``lifecycle.restore_user``: ``RestoreWindowExpired``, ``UserPurged``). Limited and
    locked out like a login. Commits."""
    email = email.strip().lower()
    _login_guard(session, email, ip_key, limits)
    user = _check_password(session, email, password, limits, ip_key)
    session.commit()
    return lifecycle.restore_user(session, user.id)


# --- export ---------------------------------------------------------------------------------
#: (file name, table, the user's rows (alias x), column left out). Secrets (password
#: and token hashes) are left out. A table a later migration adds is skipped while it
#: does not exist.
_OWN = "x.user_id = :u"
EXPORT_TABLES: tuple[tuple[str, str, str, str | None], ...] = (
    ("user", "users", "x.id = :u", "password_hash"),
    ("api_keys", "api_keys", _OWN, "key_hash"),
    ("sessions", "user_sessions", _OWN, "token_hash"),
    ("email_verifications", "email_verifications", _OWN, "token_hash"),
    ("datasets", "datasets", _OWN, None),
    ("dataset_versions", "dataset_versions", _OWN, None),
    (
        "dataset_profiles",
        "dataset_profiles",
        "x.dataset_version_id IN (SELECT v.id FROM dataset_versions AS v WHERE v.user_id = :u)",
        None,
    ),
    ("ingestion_jobs", "ingestion_jobs", _OWN, None),
    ("workflows", "workflows", _OWN, None),
    ("workflow_snapshots", "workflow_snapshots", _OWN, None),
    ("jobs", "jobs", _OWN, None),
    (
        "job_nodes",
        "job_nodes",
        "x.job_id IN (SELECT j.id FROM jobs AS j WHERE j.user_id = :u)",
        None,
    ),
    ("models", "models", _OWN, None),
    ("registered_models", "registered_models", _OWN, None),
    ("model_versions", "model_versions", _OWN, None),
    ("model_downloads", "model_downloads", _OWN, None),
    ("experiments", "experiments", _OWN, None),
    ("experiment_runs", "experiment_runs", _OWN, None),
    ("credit_transactions", "credit_transactions", _OWN, None),
    ("tutorial_progress", "user_tutorial_progress", _OWN, None),
)


#: (folder in the archive, query of (id, stored location, file name)) of the user's files.
EXPORT_FILES: tuple[tuple[str, str], ...] = (
    (
        "files/uploads",  # the files as uploaded
        "SELECT v.id, i.source_path, coalesce(v.original_filename, 'upload')"
        " FROM ingestion_jobs AS i JOIN dataset_versions AS v ON v.id = i.dataset_version_id"
        " WHERE i.user_id = :u AND i.source_path IS NOT NULL ORDER BY v.created_at",
    ),
    (
        "files/datasets",  # the ingested copies (Parquet)
        "SELECT x.id, x.s3_path, 'data.parquet' FROM dataset_versions AS x"
        " WHERE x.user_id = :u AND x.s3_path IS NOT NULL ORDER BY x.created_at",
    ),
    (
        "files/models",
        "SELECT x.id, x.s3_path, 'model' FROM models AS x"
        " WHERE x.user_id = :u AND x.s3_path IS NOT NULL ORDER BY x.created_at",
    ),
)


def export_records(conn: Connection | Session, user_id: uuid.UUID) -> Iterator[tuple[str, str]]:
    """The user's records: (name, JSON array text) per table, row by row into the text
    (each table is read in one query; the archive is written as it is read)."""
    present = set(
        conn.execute(
            text(
                "SELECT c.relname FROM pg_class AS c"
                " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
            )
        ).scalars()
    )
    for name, table, owner, secret in EXPORT_TABLES:
        if table not in present:
            continue
        row = "to_jsonb(x)" + (f" - '{secret}'" if secret else "")
        query = f"SELECT {row} FROM {table} AS x WHERE {owner}"  # noqa: S608 (constants)
        rows = conn.execute(text(query), {"u": user_id}).scalars()
        yield name, "[" + ",\n".join(json.dumps(r, default=str) for r in rows) + "]\n"


def export_files(conn: Connection | Session, user_id: uuid.UUID) -> Iterator[tuple[str, str]]:
    """(path in the archive, stored location) of the user's files."""
    for folder, query in EXPORT_FILES:
        for ident, location, filename in conn.execute(text(query), {"u": user_id}):
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(filename))[:100]
            yield f"{folder}/{ident}/{safe or 'file'}", location
