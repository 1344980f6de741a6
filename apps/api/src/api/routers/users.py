"""Sign-up, the caller's account, and API keys."""

from __future__ import annotations

import uuid
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select, update

from api.deps import (
    ALL_SCOPES,
    KeyManager,
    Principal,
    Reader,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StorageDep,
    name_actor,
    new_api_key,
)
from api.errors import ApiError, error_responses, not_found
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.policy import active_jobs, limits_for
from api.routers.auth import ip_key, limits_of, send_verification
from api.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    ApiKeyQuotasIn,
    LimitsOut,
    MeOut,
    SignUpIn,
    SignUpOut,
    Usage,
    UserOut,
)
from api.storage import Storage
from database import identity
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
    responses=error_responses(409, 422, 429),
    summary="Sign up: create a user and its first API key",
)
def sign_up(
    body: SignUpIn, request: Request, session: SessionDep, settings: SettingsDep
) -> SignUpOut:
    """Creates the account and returns its first API key, with every scope, and mails
    a link to verify the address.

    The key is shown once. An email already registered is 409 ``already_exists``.
    Too many sign-ups from one address: 429 ``too_many_requests`` with ``Retry-After``.
    """
    identity.record_signup(session, ip_key(request), limits_of(settings))
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
    token, email = identity.issue_verification(session, user.id)
    session.commit()
    send_verification(request, settings, email, token)
    return SignUpOut(user=UserOut.model_validate(user), api_key=_created_key(key, plain))


@router.get(
    "/me",
    response_model=MeOut,
    responses=error_responses(401, 403),
    summary="The caller's account, usage and tier limits",
)
def get_me(principal: Reader, session: SessionDep, settings: SettingsDep) -> MeOut:
    """The account of the key or session making the request: its email, tier and balance, what it
    holds now (datasets, workflows, models, storage, running jobs) and its tier's limits on them.
    Scope `read`."""
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
        rate_limit_per_minute=body.rate_limit_per_minute,
        monthly_row_quota=body.monthly_row_quota,
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


@router.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 422),
    summary="Delete the account (restorable for 30 days)",
)
def delete_me(principal: KeyManager, session: SessionDep) -> Response:
    """Soft delete: every key and session is refused at once (401
    ``account_deleted``); the sessions are revoked for good. ``POST /v1/auth/restore``
    with the password brings the account and its keys back within 30 days; after
    that the data is purged (``automl-db purge``). Set a password first
    (``PUT /v1/me/password``), or the account cannot be restored through the API."""
    identity.delete_account(session, principal.user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class _Pipe:
    """A write-only stream zipfile writes into and the response reads from."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


def _archive(factory: Any, storage: Storage, user_id: uuid.UUID) -> Iterator[bytes]:
    pipe = _Pipe()
    with factory() as session, zipfile.ZipFile(pipe, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, body in identity.export_records(session, user_id):
            archive.writestr(f"records/{name}.json", body)
            yield pipe.take()
        files = list(identity.export_files(session, user_id))
        session.rollback()  # hold no transaction while the files stream
        missing = []
        for path, location in files:
            try:
                with archive.open(path, "w") as out:
                    for chunk in storage.chunks(location):
                        out.write(chunk)
                        if sum(len(c) for c in pipe.chunks) >= 1 << 20:
                            yield pipe.take()
            except (FileNotFoundError, OSError, ValueError):
                missing.append(location)
            yield pipe.take()
        if missing:
            archive.writestr("files/MISSING.txt", "\n".join(missing) + "\n")
    yield pipe.take()


@router.get(
    "/me/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A zip archive: records/*.json and files/...",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(401, 403),
    },
    summary="Everything the account holds, in one zip archive (streamed)",
)
def export_me(
    principal: Reader, session: SessionDep, factory: SessionFactoryDep, storage: StorageDep
) -> StreamingResponse:
    """``records/<table>.json`` (the user, API keys and sessions without their hashes,
    datasets and versions, workflows, jobs, models, the registry, experiments, the
    ledger...) and the files from storage: ``files/uploads/<version id>/<name>`` (as
    uploaded), ``files/datasets/<version id>/data.parquet`` (ingested),
    ``files/models/<model id>/model``; a file missing from storage is listed in
    ``files/MISSING.txt``. Written as it is read: the
    archive never sits whole in memory."""
    # Authentication's transaction ends here: the archive reads with a session of its
    # own, and no connection waits idle in a transaction while the stream goes.
    session.close()
    return StreamingResponse(
        _archive(factory, storage, principal.user_id),
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="automl-export.zip"'},
    )


@router.patch(
    "/api-keys/{key_id}",
    response_model=ApiKeyOut,
    responses=error_responses(401, 403, 404, 422),
    summary="Change an API key's quotas",
)
def change_api_key_quotas(
    principal: KeyManager, session: SessionDep, key_id: uuid.UUID, body: ApiKeyQuotasIn
) -> ApiKeyOut:
    """Set ``rate_limit_per_minute`` and ``monthly_row_quota`` (null: no limit); the
    fields left out stay. Counted from the current window on. The same rule as a
    revocation: a key manages only keys with no scope it lacks (403)."""
    key = session.scalar(
        select(APIKey).where(APIKey.id == key_id, APIKey.user_id == principal.user_id)
    )
    if key is None:
        raise not_found("API key")
    _no_more_than(principal, key.scopes, "a key cannot change a key with scopes it lacks")
    for name in body.model_fields_set:
        setattr(key, name, getattr(body, name))
    session.flush()
    session.commit()
    return ApiKeyOut.model_validate(key)
