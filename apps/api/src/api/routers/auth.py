"""Password login, sessions, password changes, email verification and restore.

Thin: every rule is ``database.identity``'s.
"""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import select

from api.deps import KeyManager, Reader, SessionDep, SettingsDep, client_ip, user_agent
from api.errors import ApiError, error_responses, not_found
from api.mail import Mailer, verification_mail
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.schemas import (
    LoginIn,
    LoginOut,
    PasswordChanged,
    PasswordIn,
    RestoreIn,
    SessionOut,
    UserOut,
    VerifiedOut,
    VerifyEmailIn,
)
from api.settings import ApiSettings
from database import identity
from database.models import UserSession

router = APIRouter(tags=["identity"])


def limits_of(settings: ApiSettings) -> identity.AbuseLimits:
    i = settings.identity
    return identity.AbuseLimits(
        signup_per_ip=i.signup_per_ip,
        signup_window_s=i.signup_window_s,
        login_per_ip=i.login_per_ip,
        login_window_s=i.login_window_s,
        lockout_failures=i.lockout_failures,
        lockout_window_s=i.lockout_window_s,
        lockout_s=i.lockout_s,
        slow_failures=i.slow_failures,
        slow_window_s=i.slow_window_s,
        slow_interval_s=i.slow_interval_s,
        known_address_days=i.known_address_days,
    )


def ip_key(request: Request) -> str | None:
    """The address the abuse limits count by (the peer's; a proxy in front must be
    configured to pass the client's, e.g. uvicorn's --proxy-headers)."""
    return request.client.host if request.client else None


def send_verification(request: Request, settings: ApiSettings, email: str, token: str) -> None:
    mailer: Mailer = request.app.state.mailer
    mailer.send(verification_mail(email, token, settings.public_url))


@router.post(
    "/auth/login",
    response_model=LoginOut,
    responses=error_responses(401, 403, 422, 429),
    summary="Log in with email and password: a session token, used as a Bearer",
)
def login(body: LoginIn, request: Request, session: SessionDep, settings: SettingsDep) -> LoginOut:
    """Wrong email or password (or none set) is 401 ``invalid_credentials``, the same
    answer for each. Too many attempts from the address, or failures for the account,
    is 429 ``too_many_requests`` with ``Retry-After``."""
    token, row = identity.login(
        session,
        body.email,
        body.password,
        ip=client_ip(request),
        user_agent=user_agent(request),
        limits=limits_of(settings),
        ttl=dt.timedelta(hours=settings.identity.session_ttl_hours),
        ip_key=ip_key(request),
    )
    return LoginOut(token=token, expires_at=row.expires_at, session_id=row.id)


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 422),
    summary="Revoke the session making the request",
)
def logout(principal: Reader, session: SessionDep) -> Response:
    """Only a session logs out (an API key is revoked with DELETE /v1/api-keys/{id}:
    422 ``not_a_session``)."""
    if principal.session is None:
        raise ApiError(422, "not_a_session", "this request is made with an API key, not a session")
    identity.revoke_session(session, principal.user_id, principal.session.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/sessions",
    response_model=Page[SessionOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's login sessions, newest first (revoked and expired included)",
)
def list_sessions(
    principal: KeyManager,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[SessionOut]:
    """Every login session of the caller's account, revoked and expired ones included, newest first;
    `current` marks the one making the request. Keyset pagination (`limit`, `cursor`)."""
    rows, next_cursor = paginate(
        session,
        select(UserSession).where(UserSession.user_id == principal.user_id),
        UserSession.created_at,
        UserSession.id,
        limit=limit,
        cursor=cursor,
    )
    current = principal.session.id if principal.session is not None else None
    items = []
    for row in rows:
        out = SessionOut.model_validate(row)
        out.ip = None if row.ip is None else str(row.ip)
        out.current = row.id == current
        items.append(out)
    return Page[SessionOut](items=items, next_cursor=next_cursor)


@router.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
    summary="Revoke one of the caller's sessions",
)
def revoke_session(principal: KeyManager, session: SessionDep, session_id: uuid.UUID) -> Response:
    """Refused at once on its next request; revoking a revoked session changes nothing."""
    if not identity.revoke_session(session, principal.user_id, session_id):
        raise not_found("session")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/me/password",
    response_model=PasswordChanged,
    responses=error_responses(401, 403, 422),
    summary="Set or change the password; the other sessions are revoked",
)
def change_password(
    principal: KeyManager, session: SessionDep, body: PasswordIn
) -> PasswordChanged:
    """``current_password`` is required once the account has a password (403
    ``password_required`` when missing or wrong). 10 to 1024 characters, no NUL (422
    ``invalid_password``). Every session but the caller's own is revoked."""
    keep = principal.session.id if principal.session is not None else None
    revoked = identity.change_password(
        session, principal.user_id, body.new_password, body.current_password, keep_session=keep
    )
    return PasswordChanged(sessions_revoked=revoked)


@router.post(
    "/auth/verify-email",
    response_model=VerifiedOut,
    responses=error_responses(401, 422),
    summary="Confirm an email address with the token the mail carried",
)
def verify_email(body: VerifyEmailIn, session: SessionDep) -> VerifiedOut:
    """A token verifies once, within 48 hours, while the address is still the
    account's; otherwise 401 ``invalid_credentials`` ("invalid or expired token")."""
    user_id = identity.verify_email(session, body.token)
    return VerifiedOut(user_id=user_id, email_verified=True)


@router.post(
    "/me/verification-email",
    status_code=status.HTTP_202_ACCEPTED,
    response_class=Response,
    responses=error_responses(401, 403, 409, 422),
    summary="Send the verification mail again",
)
def resend_verification(
    principal: KeyManager, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """Mails a new verification token to the caller's address; 202 once it is sent. 409
    `already_verified` when the address is already verified."""
    if principal.user.email_verified:
        raise ApiError(409, "already_verified", "this address is already verified")
    token, email = identity.issue_verification(session, principal.user_id)
    session.commit()
    send_verification(request, settings, email, token)
    return Response(status_code=status.HTTP_202_ACCEPTED)


@router.post(
    "/auth/restore",
    response_model=UserOut,
    responses=error_responses(401, 404, 409, 422, 429),
    summary="Restore a deleted account within 30 days, with its password",
)
def restore_account(
    body: RestoreIn, request: Request, session: SessionDep, settings: SettingsDep
) -> UserOut:
    """Limited like a login. Deleted more than 30 days ago: 409
    ``restore_window_expired``; purged: 404. The API keys work again; log in anew for
    a session."""
    user = identity.restore_account(
        session, body.email, body.password, limits=limits_of(settings), ip_key=ip_key(request)
    )
    return UserOut.model_validate(user)
