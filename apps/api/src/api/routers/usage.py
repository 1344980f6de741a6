"""What a caller used and paid (``GET /v1/usage``), and a deployment's request log
(``GET /v1/deployments/{id}/requests``). Thin: the rules live in database.metering."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from api.deps import Reader, SessionDep
from api.errors import ApiError, error_responses, not_found
from api.pagination import (
    DEFAULT_LIMIT,
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    paginate,
)
from api.schemas import Schema
from database import metering
from database.models import InferenceRequest, InferenceStatus
from database.types import MIN_DATETIME, InvalidDatetime, check_datetime

router = APIRouter(tags=["usage"])

#: The longest span one GET /v1/usage may cover.
MAX_SPAN = dt.timedelta(days=366)


class GroupBy(StrEnum):
    """How usage rows are grouped: per day (UTC), per deployment, or per sku."""

    DAY = "day"
    DEPLOYMENT = "deployment"
    SKU = "sku"


class UsageRow(Schema):
    """What was used in the span, for one day, deployment or sku."""

    key: str
    """The day (YYYY-MM-DD, UTC), the deployment's id ("" for use of none) or the sku."""
    sku: str
    """What was used (prediction_rows, batch_rows...)."""
    quantity: int
    """Units used in the span (rows predicted, rows of batches)."""
    cost_credits: Decimal
    """What they cost, in credits (exact; fractions of a credit carry to the next charge)."""
    charged_credits: int
    """Credits the ledger charged for usage of this group whose period starts in the span."""


class UsageOut(Schema):
    """What the caller used and was charged in a span, grouped."""

    start: dt.datetime
    """The span's start (inclusive)."""
    end: dt.datetime
    """The span's end (exclusive)."""
    group_by: GroupBy
    """How the rows are grouped: day, deployment or sku."""
    items: list[UsageRow]
    """One row per group."""
    total_quantity: int
    """Units used in the span."""
    total_cost_credits: Decimal
    """What they cost, in credits (exact)."""
    total_charged_credits: int
    """Credits the ledger charged for them."""


class InferenceRequestOut(Schema):
    """One prediction request a deployment answered."""

    id: uuid.UUID
    """The request's id (UUID)."""
    deployment_id: uuid.UUID
    """The deployment."""
    model_version_id: uuid.UUID | None
    """The model version that answered."""
    api_key_id: uuid.UUID | None
    """The key that asked (null: a session)."""
    rows: int
    """Rows predicted."""
    latency_ms: int
    """How long it took."""
    status: InferenceStatus
    """How it ended (success, or why not)."""
    error_class: str | None
    """The error's kind when it failed."""
    request_id: str | None
    """The X-Request-ID of the request."""
    created_at: dt.datetime
    """When the request was created (UTC)."""

    model_config = {"from_attributes": True}


def _instant(value: dt.datetime | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return check_datetime(value)
    except InvalidDatetime as exc:
        raise ApiError(422, "invalid_value", f"{name}: {exc}") from None


@router.get(
    "/usage",
    response_model=UsageOut,
    responses=error_responses(401, 403, 422),
    summary="What the caller used and paid, grouped by day, deployment or sku",
)
def get_usage(
    principal: Reader,
    session: SessionDep,
    start: Annotated[
        dt.datetime | None,
        Query(alias="from", description="Start (inclusive, with a zone); default: 30 days ago"),
    ] = None,
    end: Annotated[
        dt.datetime | None,
        Query(alias="to", description="End (exclusive, with a zone); default: now"),
    ] = None,
    group_by: Annotated[
        GroupBy, Query(description="Rows per day (UTC), per deployment or per sku.")
    ] = GroupBy.DAY,
) -> UsageOut:
    """Usage is counted by the date it happened, cost in exact credits; charges
    (whole credits) by the start of the period they charged."""
    to = _instant(end, "to") or dt.datetime.now(dt.UTC)
    month = dt.timedelta(days=30)
    frm = _instant(start, "from") or (to - month if to - MIN_DATETIME > month else MIN_DATETIME)
    if frm >= to:
        raise ApiError(422, "invalid_range", "from must be before to")
    if to - frm > MAX_SPAN:
        raise ApiError(422, "invalid_range", f"a span of at most {MAX_SPAN.days} days")
    rows = metering.usage_summary(session, principal.user_id, frm, to, group_by.value)
    items = [
        UsageRow(
            key=r["key"],
            sku=r["sku"],
            quantity=r["quantity"],
            cost_credits=Decimal(r["cost_micro"]) / metering.MICRO,
            charged_credits=r["charged_credits"],
        )
        for r in rows
    ]
    return UsageOut(
        start=frm,
        end=to,
        group_by=group_by,
        items=items,
        total_quantity=sum(i.quantity for i in items),
        total_cost_credits=sum((i.cost_credits for i in items), Decimal(0)),
        total_charged_credits=sum(i.charged_credits for i in items),
    )


# --- a deployment's requests ---------------------------------------------------------
OwnsDeployment = Callable[[Session, uuid.UUID, uuid.UUID], bool]


def owns_deployment(session: Session, deployment_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Whether ``deployment_id`` is ``user_id``'s: a query on serving's
    ``deployments`` table (id, user_id, ...). Until that table exists (metering's
    branch alone), no deployment is anyone's: 404, not a 500. The integrator may drop
    the ``to_regclass`` test once serving's migration is in."""
    if session.execute(text("SELECT to_regclass('public.deployments')")).scalar() is None:
        return False
    found = session.execute(
        text("SELECT 1 FROM deployments WHERE id = :d AND user_id = :u"),
        {"d": deployment_id, "u": user_id},
    ).first()
    return found is not None


def get_ownership_check() -> OwnsDeployment:
    """The ownership check (a dependency, so a test or the integrator may swap it)."""
    return owns_deployment


OwnershipDep = Annotated[OwnsDeployment, Depends(get_ownership_check)]


@router.get(
    "/deployments/{deployment_id}/requests",
    response_model=Page[InferenceRequestOut],
    responses=error_responses(401, 403, 404, 422),
    summary="A deployment's inference requests, newest first (owner only)",
)
def list_deployment_requests(
    principal: Reader,
    session: SessionDep,
    owns: OwnershipDep,
    deployment_id: uuid.UUID,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    status: Annotated[
        InferenceStatus | None, Query(description="Only requests that ended so.")
    ] = None,
) -> Page[InferenceRequestOut]:
    """The log of the deployment's requests (never their payloads): rows, latency,
    status, error class. Another user's deployment is a missing one (404)."""
    if cursor:
        decode_cursor(cursor, dt.datetime)  # a bad cursor is 422, whoever's deployment
    if not owns(session, deployment_id, principal.user_id):
        raise not_found("deployment")
    stmt = select(InferenceRequest).where(
        InferenceRequest.deployment_id == deployment_id,
        InferenceRequest.user_id == principal.user_id,
    )
    if status is not None:
        stmt = stmt.where(InferenceRequest.status == status)
    rows, next_cursor = paginate(
        session,
        stmt,
        InferenceRequest.created_at,
        InferenceRequest.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[InferenceRequestOut](
        items=[InferenceRequestOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )
