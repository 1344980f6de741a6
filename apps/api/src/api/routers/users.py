"""Sign-up, the caller's account, and API keys."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import func, select, update

from api.deps import (
    ALL_SCOPES,
    KeyManager,
    Principal,
    Reader,
    SessionDep,
    SettingsDep,
    name_actor,
    new_api_key,
)
from api.errors import ApiError, error_responses, not_found
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.policy import active_jobs, limits_for
from api.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    LimitsOut,
    MeOut,
    SignUpIn,
    SignUpOut,
    Usage,
    UserOut,
)
from database.models import APIKey, User

router = APIRouter(tags=["identity"])


def _created_key(key: APIKey, plain: str) -> ApiKeyCreated:
    return ApiKeyCreated.model_validate(
        {**ApiKeyOut.model_validate(key).model_dump(), "key": plain}
    )


def _no_more_than(principal: Principal, scopes: Iterable[str], message: str) -> None:
    """A key manages (creates, revokes) only keys whose scopes are a subset of its own."""
    beyond = sorted(set(scopes) - principal.scopes)
    if beyond:
        raise ApiError(403, "insufficient_scope", message, {"scopes": beyond})


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=SignUpOut,
    responses=error_responses(409, 422),
    summary="Sign up: create a user and its first API key",
)
def sign_up(body: SignUpIn, session: SessionDep, request: Request) -> SignUpOut:
    """Creates the account and returns its first API key, with every scope.

    The key is shown once. An email already registered is 409 ``already_exists``.
    """
    exists = session.scalar(select(User.id).where(User.email == body.email))
    if exists is not None:
        raise ApiError(409, "already_exists", "an account with this email already exists")
    user = User(email=body.email, full_name=body.full_name)
    session.add(user)
    session.flush()  # the unique key on email refuses a concurrent twin: 409 as well
    name_actor(request, session, user_id=user.id)  # the first key is the new user's doing
    plain, prefix, digest = new_api_key()
    key = APIKey(
        user_id=user.id, name="default", prefix=prefix, key_hash=digest, scopes=list(ALL_SCOPES)
    )
    session.add(key)
    session.flush()
    session.commit()
    return SignUpOut(user=UserOut.model_validate(user), api_key=_created_key(key, plain))


@router.get(
    "/me",
    response_model=MeOut,
    responses=error_responses(401, 403),
    summary="The caller's account, usage and tier limits",
)
def me(principal: Reader, session: SessionDep, settings: SettingsDep) -> MeOut:
    user = session.get(User, principal.user_id, populate_existing=True)
    if user is None:  # pragma: no cover - the key's user exists (CASCADE)
        raise not_found("user")
    limits = limits_for(settings, user)
    return MeOut(
        **UserOut.model_validate(user).model_dump(),
        usage=Usage(
            datasets=user.dataset_count,
            workflows=user.workflow_count,
            models=user.model_count,
            storage_bytes=user.storage_used_bytes,
            running_jobs=active_jobs(session, user.id),
        ),
        limits=LimitsOut(**limits.model_dump()),
    )


@router.get(
    "/api-keys",
    response_model=Page[ApiKeyOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's API keys, newest first (revoked ones included)",
)
def list_api_keys(
    principal: KeyManager,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[ApiKeyOut]:
    """Every key of the account, wider ones included: a list shows no secret (only
    the prefix), and what a key could do with a wider one, revoke it, is refused."""
    rows, next_cursor = paginate(
        session,
        select(APIKey).where(APIKey.user_id == principal.user_id),
        APIKey.created_at,
        APIKey.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[ApiKeyOut](
        items=[ApiKeyOut.model_validate(k) for k in rows], next_cursor=next_cursor
    )


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=error_responses(401, 403, 422),
    summary="Create an API key (shown once)",
)
def create_api_key(principal: KeyManager, session: SessionDep, body: ApiKeyIn) -> ApiKeyCreated:
    """A new key with the given scopes (default: the calling key's; at least one),
    never more than the calling key has (403 ``insufficient_scope``), and an
    optional expiry in the future."""
    scopes: list[str]
    if body.scopes is not None:
        scopes = list(dict.fromkeys(body.scopes))
    else:
        scopes = [s for s in ALL_SCOPES if s in principal.scopes]
    _no_more_than(principal, scopes, "a key cannot grant scopes the calling key lacks")
    if body.expires_at is not None:
        now = session.execute(select(func.now())).scalar_one()
        if body.expires_at <= now:
            raise ApiError(422, "invalid_expiry", "expires_at must be in the future")
    plain, prefix, digest = new_api_key()
    key = APIKey(
        user_id=principal.user_id,
        name=body.name,
        prefix=prefix,
        key_hash=digest,
        scopes=scopes,
        expires_at=body.expires_at,
    )
    session.add(key)
    session.flush()
    session.commit()
    return _created_key(key, plain)


@router.delete(
    "/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
    summary="Revoke an API key",
)
def revoke_api_key(principal: KeyManager, session: SessionDep, key_id: uuid.UUID) -> Response:
    """Revoked at once and for good; revoking a revoked key changes nothing. A key
    may revoke only keys with no scope it lacks itself (403 ``insufficient_scope``)."""
    target = session.scalar(
        select(APIKey.scopes).where(APIKey.id == key_id, APIKey.user_id == principal.user_id)
    )
    if target is None:
        raise not_found("API key")
    _no_more_than(principal, target, "a key cannot revoke a key with scopes it lacks")
    session.execute(
        update(APIKey)
        .where(APIKey.id == key_id, APIKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
