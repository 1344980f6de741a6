"""Request dependencies: the database session, the settings, the caller and its scopes."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from api.errors import ApiError
from api.settings import ApiSettings
from api.storage import Storage
from database import audit
from database.models import APIKey, User

# --- scopes ---------------------------------------------------------------------------------
READ = "read"  # every GET of the caller's own resources
WRITE = "write"  # create, change and delete datasets, workflows, runs, jobs, experiments
BILLING = "billing"  # buy credits
KEYS = "keys"  # list, create and revoke API keys
ALL_SCOPES: tuple[str, ...] = (READ, WRITE, BILLING, KEYS)

KEY_PREFIX = "aml_"
#: Characters of the key kept readable: "aml_" and 8 of the random part.
PREFIX_LENGTH = len(KEY_PREFIX) + 8
#: The key is written at most this often as last used.
LAST_USED_RESOLUTION_S = 60


def new_api_key() -> tuple[str, str, str]:
    """A fresh key: (the key, its readable prefix, its hash)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:PREFIX_LENGTH], hash_api_key(key)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --- app state --------------------------------------------------------------------------------
def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def get_session(request: Request) -> Iterator[Session]:
    """One session per request. The route commits what it keeps; the rest rolls back.

    Tests override this dependency to use their own database.
    """
    factory = getattr(request.app.state, "sessionmaker", None)
    if factory is None:
        from database.session import get_sessionmaker

        factory = request.app.state.sessionmaker = get_sessionmaker()
    with factory() as session:
        yield session


def get_session_factory(request: Request) -> sessionmaker[Session]:
    """The sessionmaker itself, for a route that opens short sessions of its own (the
    event stream, which must hold no connection between its polls).

    Tests override this dependency, like :func:`get_session`.
    """
    factory = getattr(request.app.state, "sessionmaker", None)
    if factory is None:
        from database.session import get_sessionmaker

        factory = request.app.state.sessionmaker = get_sessionmaker()
    return factory


SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]


# --- the caller -------------------------------------------------------------------------------
@dataclass
class Principal:
    user: User
    key: APIKey

    @property
    def user_id(self) -> uuid.UUID:
        return self.user.id

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.key.scopes)


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="An API key: `Authorization: Bearer aml_...` (POST /v1/users returns the first).",
)


def _unauthenticated(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def request_id(request: Request) -> str:
    """The request's id (``api.request_id.RequestId``; a new one outside it)."""
    value = getattr(request.state, "request_id", None)
    if not isinstance(value, str):
        value = request.state.request_id = audit.new_request_id()
    return value


def name_actor(
    request: Request,
    session: Session,
    *,
    user_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
) -> None:
    """The session's actor for the audit trail: the caller, the request's id, the
    client's address (the socket's peer: behind a proxy, run uvicorn with
    ``--proxy-headers --forwarded-allow-ips``) and its user agent."""
    audit.set_actor(
        session,
        user_id=user_id,
        api_key_id=api_key_id,
        request_id=request_id(request),
        client_ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


def get_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <key>``; 401 otherwise.

    A revoked or expired key, and any key of a soft-deleted user, is refused. Once
    the caller is known, the session names it as the actor of everything the
    request changes (``database.audit.set_actor``: user, key, request id, client IP,
    user agent), for the audit triggers.
    """
    if credentials is None or not credentials.credentials:
        raise _unauthenticated("unauthenticated", "an API key is required (Authorization: Bearer)")
    token = credentials.credentials
    if not token.startswith(KEY_PREFIX) or len(token) > 200:
        raise _unauthenticated("invalid_api_key", "unknown API key")
    row = session.execute(
        select(APIKey, User, func.now().label("now"))
        .join(User, User.id == APIKey.user_id)
        .where(APIKey.key_hash == hash_api_key(token))
    ).one_or_none()
    if row is None:
        raise _unauthenticated("invalid_api_key", "unknown API key")
    key, user, now = row
    if key.revoked_at is not None:
        raise _unauthenticated("api_key_revoked", "this API key was revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise _unauthenticated("api_key_expired", "this API key has expired")
    if user.is_deleted:
        raise _unauthenticated("account_deleted", "the account of this API key was deleted")
    if key.last_used_at is None or key.last_used_at < now - dt.timedelta(
        seconds=LAST_USED_RESOLUTION_S
    ):
        # Recorded even when the request then fails; at most once a minute per key.
        session.execute(
            update(APIKey)
            .where(
                APIKey.id == key.id,
                or_(
                    APIKey.last_used_at.is_(None),
                    APIKey.last_used_at < func.now() - dt.timedelta(seconds=LAST_USED_RESOLUTION_S),
                ),
            )
            .values(last_used_at=func.now())
            .execution_options(synchronize_session=False)
        )
        set_committed_value(key, "last_used_at", now)
    session.commit()
    name_actor(request, session, user_id=user.id, api_key_id=key.id)
    return Principal(user=user, key=key)


def require(scope: str) -> Callable[[Principal], Principal]:
    """A dependency: the caller, whose key must carry ``scope`` (403 otherwise)."""

    def dependency(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if scope not in principal.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"this API key lacks the '{scope}' scope",
                {"required_scope": scope, "key_scopes": sorted(principal.scopes)},
            )
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


Reader = Annotated[Principal, Depends(require(READ))]
Writer = Annotated[Principal, Depends(require(WRITE))]
Buyer = Annotated[Principal, Depends(require(BILLING))]
KeyManager = Annotated[Principal, Depends(require(KEYS))]


def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """An administrator (403 ``admin_required`` otherwise).

    STAND-IN of the audit branch: there are no roles here yet, so it refuses
    everyone. The identity branch owns the real ``require_admin`` / ``AdminDep``
    (users.role); the integrator keeps that one.
    """
    raise ApiError(403, "admin_required", "this route is for administrators")


AdminDep = Annotated[Principal, Depends(require_admin)]
