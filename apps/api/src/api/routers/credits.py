"""Credits: balance, ledger, packages on sale to the caller, and (development) purchase."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, status
from sqlalchemy import select

from api.deps import Purchaser, Reader, SessionDep, SettingsDep
from api.errors import ApiError, error_responses
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.schemas import BalanceOut, PackageOut, PurchaseIn, PurchaseOut, TransactionOut
from database import credits
from database.models import (
    CreditPackage,
    CreditTierRestriction,
    CreditTransaction,
    User,
    UserTier,
)

router = APIRouter(tags=["credits"])

#: The package restrictions each tier may buy (the database enforces the same, ML008).
BUYABLE: dict[UserTier, tuple[CreditTierRestriction, ...]] = {
    UserTier.FREE: (CreditTierRestriction.NONE,),
    UserTier.PRO: (CreditTierRestriction.NONE, CreditTierRestriction.PRO_ONLY),
    UserTier.ENTERPRISE: tuple(CreditTierRestriction),
}


@router.get(
    "/credits/balance",
    response_model=BalanceOut,
    responses=error_responses(401, 403),
    summary="The caller's credit balance",
)
def get_balance(principal: Reader, session: SessionDep) -> BalanceOut:
    """The caller's credit balance now: what runs, predictions and storage draw from."""
    value = session.scalar(select(User.credit_balance).where(User.id == principal.user_id))
    return BalanceOut(balance=value or 0)


@router.get(
    "/credits/transactions",
    response_model=Page[TransactionOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's credit ledger, newest first",
)
def list_transactions(
    principal: Reader,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[TransactionOut]:
    """The caller's credit ledger, newest first: every purchase, charge, refund and adjustment with
    the balance after it (keyset pagination)."""
    rows, next_cursor = paginate(
        session,
        select(CreditTransaction).where(CreditTransaction.user_id == principal.user_id),
        CreditTransaction.created_at,
        CreditTransaction.id,
        limit=limit,
        cursor=cursor,
        group=credits.ledger_month,
    )
    # A purchase's and a usage charge's description are derived (issue 16's weight).
    described = credits.describe(session, rows)
    return Page[TransactionOut](
        items=[
            TransactionOut.model_validate(t).model_copy(update={"description": described[t.id]})
            for t in rows
        ],
        next_cursor=next_cursor,
    )


@router.get(
    "/credit-packages",
    response_model=list[PackageOut],
    responses=error_responses(401, 403),
    summary="The credit packages on sale to the caller's tier",
)
def list_packages(principal: Reader, session: SessionDep) -> list[PackageOut]:
    """The active credit packages the caller's tier may buy, cheapest first. Buy one with `POST
    /v1/credits/checkout`."""
    tier = session.scalar(select(User.tier).where(User.id == principal.user_id))
    rows = session.scalars(
        select(CreditPackage)
        .where(
            CreditPackage.is_active.is_(True),
            CreditPackage.tier_restriction.in_(BUYABLE[UserTier(tier or UserTier.FREE)]),
        )
        .order_by(CreditPackage.price_cents, CreditPackage.id)
    ).all()
    return [PackageOut.model_validate(p) for p in rows]


@router.post(
    "/credits/purchase",
    status_code=status.HTTP_201_CREATED,
    response_model=PurchaseOut,
    responses=error_responses(401, 403, 404, 409, 422, 503),
    summary="Development only: credit a package without payment",
)
def purchase(
    principal: Purchaser,
    session: SessionDep,
    settings: SettingsDep,
    body: PurchaseIn,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=100,
            pattern=r"^[A-Za-z0-9_.:-]+$",
            description="A retry with the same key credits once.",
        ),
    ] = None,
) -> PurchaseOut:
    """Off unless ``ENABLE_DEV_PURCHASES`` is set (403 ``dev_purchases_disabled``):
    real purchases arrive through the Stripe webhook. Refusals as for a payment:
    404 for an unknown package, 409 for one not on sale, 403 for another tier's."""
    if not settings.dev_purchases:
        raise ApiError(
            403,
            "dev_purchases_disabled",
            "purchases without payment are off (ENABLE_DEV_PURCHASES); pay through Stripe",
        )
    ref = f"dev:{principal.user_id}:{idempotency_key or uuid.uuid4()}"
    entry = credits.purchase(
        session, principal.user_id, body.package_id, ref, description="development purchase"
    )
    session.commit()
    value = session.scalar(select(User.credit_balance).where(User.id == principal.user_id))
    return PurchaseOut(transaction=TransactionOut.model_validate(entry), balance=value or 0)
