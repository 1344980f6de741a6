"""An admin's routes: users, their tier, role, permissions and activity, credit
adjustments. Every route needs an admin (``AdminDep``: 403 ``admin_required``); the
database checks again that the actor is an active admin and never the user changed
(sql/triggers/identity.sql: 403 ``own_privileges``, ``admin_required``)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status
from sqlalchemy import select

from api.deps import AdminDep, SessionDep
from api.errors import error_responses, not_found
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.schemas import AdminUserOut, AdminUserPatch, CreditAdjustmentIn, CreditAdjustmentOut
from database import identity
from database.models import User

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get(
    "/users",
    response_model=Page[AdminUserOut],
    responses=error_responses(401, 403, 422),
    summary="Every user, newest first (deleted ones included)",
)
def list_users(
    principal: AdminDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[AdminUserOut]:
    """Every account, deleted ones included, newest first, with role, activity and permissions.
    Administrators only (403 `admin_required`)."""
    rows, next_cursor = paginate(
        session, select(User), User.created_at, User.id, limit=limit, cursor=cursor
    )
    return Page[AdminUserOut](
        items=[AdminUserOut.model_validate(u) for u in rows], next_cursor=next_cursor
    )


@router.get(
    "/users/{user_id}",
    response_model=AdminUserOut,
    responses=error_responses(401, 403, 404, 422),
    summary="One user",
)
def get_user(principal: AdminDep, session: SessionDep, user_id: uuid.UUID) -> AdminUserOut:
    """One account as an administrator sees it. 404 when no such user exists."""
    user = session.get(User, user_id)
    if user is None:
        raise not_found("user")
    return AdminUserOut.model_validate(user)


@router.patch(
    "/users/{user_id}",
    response_model=AdminUserOut,
    responses=error_responses(401, 403, 404, 422),
    summary="Change a user's tier, role, permissions or activity",
)
def patch_user(
    principal: AdminDep, session: SessionDep, user_id: uuid.UUID, body: AdminUserPatch
) -> AdminUserOut:
    """Fields left out stay. Deactivating (``is_active: false``) refuses the user's
    keys and sessions at once (403 ``account_inactive``). An admin never changes their
    own account here (403 ``own_privileges``): another admin, or an operator
    (``automl-db users``), does."""
    permissions = {
        name: value for name in identity.PERMISSIONS if (value := getattr(body, name)) is not None
    }
    user = identity.update_user(
        session,
        user_id,
        tier=body.tier,
        role=body.role,
        is_active=body.is_active,
        permissions=permissions,
    )
    session.commit()
    return AdminUserOut.model_validate(user)


@router.post(
    "/users/{user_id}/credit-adjustments",
    status_code=status.HTTP_201_CREATED,
    response_model=CreditAdjustmentOut,
    responses=error_responses(401, 402, 403, 404, 409, 422, 503),
    summary="Add or remove a user's credits, with a reason (idempotent)",
)
def adjust_credits(
    principal: AdminDep, session: SessionDep, user_id: uuid.UUID, body: CreditAdjustmentIn
) -> CreditAdjustmentOut:
    """The same ``idempotency_key`` again returns the first adjustment (409
    ``duplicate_adjustment`` if it was for another user or amount). A removal below
    zero is 402 ``insufficient_credits``; zero is 422. The entry's actor is
    ``admin:<the admin's id>``."""
    if session.get(User, user_id) is None:
        raise not_found("user")
    entry = identity.admin_adjust(session, user_id, body.amount, body.reason, body.idempotency_key)
    session.commit()
    return CreditAdjustmentOut.model_validate(entry)
