"""Request dependencies: the database session, the settings, the caller and its scopes."""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import ipaddress
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from api.errors import ApiError
from api.settings import ApiSettings
from api.storage import Storage
from database import audit, identity, logs
from database.models import APIKey, User, UserRole, UserSession

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
    """The authenticated caller: an API key's, or a login session's (which carries
    every scope: it is the user at a screen)."""

    user: User
    key: APIKey | None = None
    session: UserSession | None = None

    @property
    def user_id(self) -> uuid.UUID:
        return self.user.id

    @property
    def scopes(self) -> frozenset[str]:
        if self.key is not None:
            return frozenset(self.key.scopes)
        return frozenset(ALL_SCOPES)

    @property
    def is_admin(self) -> bool:
        return self.user.role == UserRole.ADMIN


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="An API key (`Authorization: Bearer aml_...`; POST /v1/users returns the first)"
    " or a session token (`Bearer ams_...`; POST /v1/auth/login returns one).",
)


def _unauthenticated(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def client_ip(request: Request) -> str | None:
    """The peer's address, if it is one (a test client's is a name)."""
    host = request.client.host if request.client else None
    if host is None:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def user_agent(request: Request) -> str | None:
    """The client's ``User-Agent`` without NUL bytes, cut to 500 characters (what every
    table that keeps one accepts); None when absent or empty."""
    value = request.headers.get("user-agent")
    return None if value is None else value.replace("\x00", "")[:500] or None


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
    session_id: uuid.UUID | None = None,
) -> None:
    """The session's actor for the audit trail (``database.audit.set_actor``, kept for
    every transaction the session starts): the caller, the request's id, the
    client's address (the socket's peer: behind a proxy, run uvicorn with
    ``--proxy-headers --forwarded-allow-ips``) and its user agent. The caller is
    bound to the request's log lines too (``database.logs``)."""
    logs.bind(user_id=str(user_id) if user_id is not None else None)
    audit.set_actor(
        session,
        user_id=user_id,
        api_key_id=api_key_id,
        session_id=session_id,
        request_id=request_id(request),
        client_ip=client_ip(request),
        user_agent=user_agent(request),
    )


#: Authentication's key lookup, built once (``database.audit.ActorLookup``): the key's
#: row, its user and the database's clock, the actor named in the same statement.
KEY_LOOKUP = audit.actor_lookup(
    select(APIKey, User, func.now().label("now"))
    .join(User, User.id == APIKey.user_id)
    .where(APIKey.key_hash == bindparam("key_hash")),
    user_id=APIKey.user_id,
    api_key_id=APIKey.id,
)


def _key_principal(session: Session, token: str, request: Request) -> Principal:
    """The key's row and its user, the actor named in the same statement
    (``database.audit.select_as_actor``): one round trip, in the transaction the
    request goes on using."""
    row = audit.select_as_actor(
        session,
        KEY_LOOKUP,
        {"key_hash": hash_api_key(token)},
        request_id=request_id(request),
        client_ip=client_ip(request),
        user_agent=user_agent(request),
    )
    if row is None:
        raise _unauthenticated("invalid_api_key", "unknown API key")
    key, user, now = row
    if key.revoked_at is not None:
        raise _unauthenticated("api_key_revoked", "this API key was revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise _unauthenticated("api_key_expired", "this API key has expired")
    if key.last_used_at is None or key.last_used_at < now - dt.timedelta(
        seconds=LAST_USED_RESOLUTION_S
    ):
        # Recorded even when the request then fails (committed now; the actor is set
        # again when the session's next transaction begins): at most once a minute
        # per key, the only time authentication costs more than its one statement.
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
        session.commit()
        set_committed_value(key, "last_used_at", now)
    return Principal(user=user, key=key)


def get_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <key or session token>``; 401 otherwise.

    A revoked or expired key or session, and any key or session of a soft-deleted
    user, is refused (401); a deactivated user's too (403 ``account_inactive``).

    One round trip: the lookup of the key (or session) and its user also names the
    caller as the actor of the request's transaction (``database.audit``'s settings,
    kept for the session's later transactions), and that transaction stays open for
    the route: a route that then streams for long ends it first (``session.close()``
    or a commit), so that no connection waits idle in a transaction.
    """
    if credentials is None or not credentials.credentials:
        raise _unauthenticated("unauthenticated", "an API key is required (Authorization: Bearer)")
    token = credentials.credentials
    if token.startswith(identity.SESSION_PREFIX):
        found, user = identity.authenticate_session(
            session,
            token,
            request_id=request_id(request),
            client_ip=client_ip(request),
            user_agent=user_agent(request),
        )
        principal = Principal(user=user, session=found)
    elif token.startswith(KEY_PREFIX) and len(token) <= 200:
        principal = _key_principal(session, token, request)
    else:
        raise _unauthenticated("invalid_api_key", "unknown API key")
    logs.bind(user_id=str(principal.user.id))  # the caller on the request's log lines
    if principal.user.is_deleted:
        raise _unauthenticated("account_deleted", "the account of this API key was deleted")
    if not principal.user.is_active:
        raise ApiError(403, "account_inactive", "this account is deactivated")
    return principal


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


def ensure_permission(principal: Principal, permission: str) -> Principal:
    """The check of :func:`require_permission`, for a route whose caller may be
    anonymous (an anonymous caller has no account to turn a permission off)."""
    if not getattr(principal.user, permission):
        raise ApiError(
            403,
            "permission_denied",
            f"this account may not do this ({permission} is off; an admin decides)",
            {"permission": permission},
        )
    return principal


def require_permission(permission: str, scope: str = WRITE) -> Callable[[Principal], Principal]:
    """A dependency: the caller, with ``scope`` and the account's ``permission`` (one
    of ``database.identity.PERMISSIONS``; an admin turns it off): 403
    ``permission_denied`` otherwise. The one place permissions are enforced."""
    if permission not in identity.PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    scoped = require(scope)

    def dependency(principal: Principal) -> Principal:
        return ensure_permission(principal, permission)

    dependency.__name__ = f"require_{permission}"
    # The parameter's dependency is this call's ``scoped``: given as an object, not as
    # the text a postponed annotation would leave FastAPI to resolve.
    dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "principal",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=Annotated[Principal, Depends(scoped)],
            )
        ],
        return_annotation=Principal,
    )
    return dependency


def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """A dependency: the caller, who must be an admin (403 ``admin_required``). The
    database checks it again for what an admin changes (sql/triggers/identity.sql)."""
    if not principal.is_admin:
        raise ApiError(403, "admin_required", "this is an admin's route")
    return principal


Reader = Annotated[Principal, Depends(require(READ))]
Writer = Annotated[Principal, Depends(require(WRITE))]
Buyer = Annotated[Principal, Depends(require(BILLING))]
KeyManager = Annotated[Principal, Depends(require(KEYS))]


def get_optional_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """The caller, or None for a request without a key: the routes that serve public
    data (public registered models) answer anonymous callers too. A key that is
    given must be valid (401 otherwise: never a silent downgrade to anonymous) and
    carry the ``read`` scope (403)."""
    if credentials is None:
        name_actor(request, session)  # no user, but the request's id, address and agent
        return None
    principal = get_principal(request, session, credentials)
    return require(READ)(principal)


#: The caller with the ``read`` scope, or None (anonymous).
MaybeReader = Annotated[Principal | None, Depends(get_optional_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
#: The permissions' dependencies, one per kind of act.
Uploader = Annotated[Principal, Depends(require_permission("can_upload"))]
Trainer = Annotated[Principal, Depends(require_permission("can_train"))]
Deployer = Annotated[Principal, Depends(require_permission("can_deploy"))]
Downloader = Annotated[Principal, Depends(require_permission("can_download", READ))]
Purchaser = Annotated[Principal, Depends(require_permission("can_buy", BILLING))]
