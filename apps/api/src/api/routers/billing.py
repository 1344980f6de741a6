"""Billing (issue 16): the price book, Stripe Checkout, invoices, the monthly
statement, billing alerts and (operators) reconciliation runs.

Thin: the rules are ``database.billing``'s. Checkout calls Stripe's API with the
official library (``STRIPE_API_KEY``; ``STRIPE_API_BASE`` points it elsewhere, as
the tests do at a local Stripe-like server); the webhook (``routers/webhooks.py``)
credits the payment and caches the invoice.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import stripe
from fastapi import APIRouter, Depends, Header, Query, Response, status
from pydantic import ConfigDict, Field, StrictInt, StringConstraints
from sqlalchemy import select

from api.deps import AdminDep, Buyer, Reader, SessionDep, SettingsDep
from api.errors import ApiError, error_responses, not_found
from api.pagination import (
    DEFAULT_LIMIT,
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    paginate,
)
from api.routers.credits import BUYABLE
from api.schemas import Input, Output, Schema
from database import billing
from database.models import (
    BillingAlert,
    BillingAlertDelivery,
    BillingAlertKind,
    BillingInvoice,
    CreditPackage,
    InvoiceStatus,
    PriceUnit,
    ReconciliationAdjustment,
    ReconciliationKind,
    ReconciliationRun,
    UserTier,
)

router = APIRouter(tags=["billing"])


def _checked_cursor(cursor: CursorQuery = None) -> str | None:
    """The cursor, decoded first (422 ``invalid_cursor``) before any access check."""
    if cursor:
        decode_cursor(cursor, dt.datetime)
    return cursor


Cursor = Annotated[str | None, Depends(_checked_cursor)]

Url = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


# --- schemas ---------------------------------------------------------------------------
class PriceItemOut(Schema):
    """One price of a price book."""

    sku: str
    """What is priced, e.g. workflow_node or prediction_rows."""
    unit: PriceUnit
    """What one unit is: a job, a node, a thousand rows, a GB-month, a minute."""
    credits_per_unit: int
    """Credits one unit costs."""


class PriceBookOut(Schema):
    """The prices in force for a tier."""

    id: uuid.UUID
    """The price book's id (UUID)."""
    tier: UserTier
    """The tier it prices."""
    currency: str
    """The currency of package prices (ISO 4217, e.g. usd)."""
    effective_from: dt.datetime
    """When it took effect."""
    effective_to: dt.datetime | None
    """When it stops (null: in force until replaced)."""
    items: list[PriceItemOut]
    """Every price."""


class CheckoutIn(Input):
    """A Stripe Checkout for a credit package."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "package_id": "3f2b8c1e-5a4d-4c2e-9b7a-1d2e3f4a5b6c",
                    "success_url": "https://app.example.com/billing/done",
                    "cancel_url": "https://app.example.com/billing",
                }
            ]
        }
    )

    package_id: uuid.UUID
    """The package to buy (GET /v1/credit-packages)."""
    success_url: Url
    """Where Stripe sends the buyer after paying."""
    cancel_url: Url
    """Where Stripe sends the buyer who gives up."""


class CheckoutOut(Schema):
    """A Stripe Checkout session to send the buyer to."""

    id: str
    """Stripe's session id."""
    url: str
    """The payment page: redirect the buyer there."""


class InvoiceOut(Output):
    """An invoice of a credit purchase (cached from Stripe)."""

    id: uuid.UUID
    """The invoice's id (UUID)."""
    stripe_id: str
    """Stripe's invoice (or checkout session) id."""
    number: str | None
    """The invoice number Stripe gave."""
    amount_cents: int
    """The amount, in cents of the currency."""
    currency: str
    """The currency (ISO 4217)."""
    status: InvoiceStatus
    """draft, open, paid, void or uncollectible."""
    period_start: dt.datetime | None
    """Start of the period invoiced."""
    period_end: dt.datetime | None
    """End of the period invoiced."""
    hosted_url: str | None
    """Stripe's page for the invoice."""
    credit_transaction_id: uuid.UUID | None
    """The ledger entry that credited the purchase."""
    created_at: dt.datetime
    """When the invoice was created (UTC)."""


class ChargeLine(Schema):
    """Credits charged for one sku in a month."""

    sku: str
    """What was charged for."""
    credits: int
    """Credits charged for it."""


class StatementOut(Schema):
    """A month's statement: the balance at both ends and every movement between, summed."""

    month: str
    """The month, YYYY-MM (UTC)."""
    period_start: dt.datetime
    """Its first instant (UTC)."""
    period_end: dt.datetime
    """The first instant after it (UTC)."""
    opening_balance: int
    """The balance when the month began."""
    purchases: int
    """Credits bought."""
    charges: list[ChargeLine]
    """Credits charged, per sku."""
    charged: int
    """Credits charged in all."""
    refunds: int
    """Credits refunded."""
    adjustments: int
    """Credits adjusted by administrators (net)."""
    closing_balance: int
    """The balance when the month ended (or now, for the current month)."""
    entries: int
    """Ledger entries in the month."""


class AlertIn(Input):
    """A billing alert: a webhook called when the balance falls below, or the month's spend rises
    above, a threshold."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "kind": "balance_below",
                    "threshold": 1000,
                    "webhook_url": "https://hooks.example.com/automl-billing",
                }
            ]
        }
    )

    kind: BillingAlertKind
    """balance_below or spend_above."""
    threshold: StrictInt = Field(ge=0, le=2**53)
    """The threshold, in credits."""
    webhook_url: Url
    """The URL each alert is POSTed to (signed with the alert's secret)."""


class AlertOut(Output):
    """A billing alert."""

    id: uuid.UUID
    """The alert's id (UUID)."""
    kind: BillingAlertKind
    """balance_below or spend_above."""
    threshold: int
    """The threshold, in credits."""
    webhook_url: str
    """The URL alerts are POSTed to."""
    active: bool
    """Whether it still fires."""
    created_at: dt.datetime
    """When the alert was created (UTC)."""


class AlertCreatedOut(AlertOut):
    """A new billing alert, with its signing secret (shown once)."""

    secret: str
    """Signs every delivery (``Billing-Signature: t=...,v1=...``); shown only now."""


class DeliveryOut(Output):
    """One attempt to deliver an alert to its webhook."""

    id: uuid.UUID
    """The delivery's id (UUID)."""
    event_id: uuid.UUID
    """The alert event delivered."""
    attempt: int
    """1 for the first try, then 2, 3..."""
    status_code: int | None
    """The HTTP status the webhook answered (null: no answer)."""
    error: str | None
    """Why the attempt failed."""
    succeeded: bool
    """Whether the webhook answered 2xx."""
    created_at: dt.datetime
    """When the delivery was created (UTC)."""


class ReconciliationAdjustmentOut(Output):
    """One value a reconciliation run's repair changed: row, column, before, after, why."""

    user_id: uuid.UUID = Field(description="The user whose row (or registry row) was repaired.")
    table_name: str = Field(
        description="The table of the corrected row: users, model_versions or registered_models."
    )
    row_id: uuid.UUID | None = Field(
        description="The corrected row's id; null for the user's own row in users."
    )
    column_name: str = Field(description="The corrected column.")
    old_value: int = Field(description="Its value before the repair.")
    new_value: int = Field(description="The value the repair set (recomputed from its rows).")
    reason: str = Field(description="Why the value was changed.")


class ReconciliationRunOut(Output):
    """A run of the ledger's reconciliation (automl-db verify, or the worker's)."""

    id: uuid.UUID
    """The run's id (UUID)."""
    kind: ReconciliationKind
    """verify (reports) or repair (also fixes)."""
    source: str
    """What started it (the CLI, the worker...)."""
    run_by: str
    """Who ran it."""
    started_at: dt.datetime
    """When it started."""
    finished_at: dt.datetime | None
    """When it finished (null: still running or died)."""
    users_checked: int
    """Users whose balances and counters were checked."""
    drift_count: int
    """Drifts found (a stored value that disagrees with the ledger)."""
    unproduced_count: int
    """Charges without the usage they should price, or the reverse."""
    repaired_count: int
    """Drifts repaired."""
    ok: bool | None
    """Whether nothing was found (null: not finished)."""
    findings: list[Any]
    """What was found, one entry per problem."""
    adjustments: list[ReconciliationAdjustmentOut] = Field(
        default_factory=list,
        description="Every value the run's repair changed, with the row and why.",
    )


# --- price book --------------------------------------------------------------------------
@router.get(
    "/price-book",
    response_model=PriceBookOut,
    responses=error_responses(401, 403, 503),
    summary="The price book in force for the caller's tier",
)
def get_price_book(principal: Reader, session: SessionDep) -> PriceBookOut:
    """The prices in force for the caller's tier: the credits each unit (job, node, thousand rows,
    GB-month, automl minute) costs."""
    book = billing.book_in_force(session, principal.user.tier)
    return PriceBookOut(
        id=book.id,
        tier=book.tier,
        currency=book.currency,
        effective_from=book.effective_from,
        effective_to=book.effective_to,
        items=[
            PriceItemOut(sku=p.sku, unit=p.unit, credits_per_unit=p.credits_per_unit)
            for _, p in sorted(book.items.items())
        ],
    )


# --- checkout ----------------------------------------------------------------------------
def _check_url(name: str, url: str) -> str:
    try:
        return billing.check_webhook_url(url, allow_http=True)
    except billing.InvalidWebhookUrl:
        raise ApiError(
            422, "invalid_url", f"{name} must be an absolute http(s) URL", {"field": name}
        ) from None


@router.post(
    "/credits/checkout",
    response_model=CheckoutOut,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 404, 409, 422, 502, 503),
    summary="Start a Stripe Checkout for a credit package; answers the page to pay on",
)
def checkout(
    principal: Buyer,
    session: SessionDep,
    settings: SettingsDep,
    body: CheckoutIn,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=100,
            pattern=r"^[A-Za-z0-9_.:-]+$",
            description="The same key again returns the same checkout session.",
        ),
    ] = None,
) -> CheckoutOut:
    """The session names the caller (``client_reference_id``) and the package
    (``metadata.package_id``), as the webhook expects; the webhook credits the
    package when Stripe says it is paid. 404 unknown package, 409 not on sale,
    403 not for the caller's tier; 503 ``checkout_not_configured`` without
    ``STRIPE_API_KEY``; 502 ``stripe_error`` when Stripe refuses or is unreachable."""
    key = settings.stripe_api_key
    if key is None or not key.get_secret_value().strip():
        raise ApiError(503, "checkout_not_configured", "STRIPE_API_KEY is not set on this server")
    success_url = _check_url("success_url", body.success_url)
    cancel_url = _check_url("cancel_url", body.cancel_url)
    package = session.get(CreditPackage, body.package_id)
    if package is None:
        raise not_found("credit package")
    if not package.is_active:
        raise ApiError(
            409, "package_unavailable", f'credit package "{package.name}" is not for sale'
        )
    tier = UserTier(principal.user.tier)
    if package.tier_restriction not in BUYABLE[tier]:
        raise ApiError(
            403,
            "package_tier_restricted",
            f'credit package "{package.name}" is not for the {tier} tier',
        )
    user_id = str(principal.user_id)
    meta = {"package_id": str(package.id), "user_id": user_id}
    line: dict[str, Any] = (
        {"price": package.stripe_price_id, "quantity": 1}
        if package.stripe_price_id
        else {
            "price_data": {
                "currency": "usd",
                "unit_amount": package.price_cents,
                "product_data": {"name": package.name},
            },
            "quantity": 1,
        }
    )
    session.rollback()  # no transaction held while Stripe answers
    client = stripe.StripeClient(
        key.get_secret_value(),
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        max_network_retries=1,
    )
    options: dict[str, Any] = {}
    if idempotency_key:
        options["idempotency_key"] = f"checkout:{user_id}:{idempotency_key}"
    try:
        params: Any = {
            "mode": "payment",
            "client_reference_id": user_id,
            "success_url": success_url,
            "cancel_url": cancel_url,
            "line_items": [line],
            "metadata": meta,
            "payment_intent_data": {"metadata": meta},
            "invoice_creation": {"enabled": True, "invoice_data": {"metadata": meta}},
        }
        created = client.v1.checkout.sessions.create(params=params, options=options)  # type: ignore[arg-type]
    except stripe.StripeError as exc:
        raise ApiError(
            502,
            "stripe_error",
            "Stripe did not create the checkout session",
            {"stripe_code": getattr(exc, "code", None)},
        ) from None
    if not created.url:
        raise ApiError(502, "stripe_error", "Stripe answered a session without a URL")
    return CheckoutOut(id=created.id, url=created.url)


# --- invoices ----------------------------------------------------------------------------
@router.get(
    "/invoices",
    response_model=Page[InvoiceOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's invoices (from Stripe), newest first",
)
def list_invoices(
    principal: Reader,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[InvoiceOut]:
    """The caller's invoices for credit purchases, cached from Stripe, newest first, with Stripe's
    hosted page for each."""
    rows, next_cursor = paginate(
        session,
        select(BillingInvoice).where(BillingInvoice.user_id == principal.user_id),
        BillingInvoice.created_at,
        BillingInvoice.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[InvoiceOut](
        items=[InvoiceOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )


# --- statement ---------------------------------------------------------------------------
@router.get(
    "/credits/statement",
    response_model=StatementOut,
    responses={
        **error_responses(401, 403, 422),
        200: {"content": {"application/json": {}, "text/csv": {}}},
    },
    summary="A calendar month (UTC) of the caller's credits: opening, movements, closing",
)
def get_statement(
    principal: Reader,
    session: SessionDep,
    month: Annotated[str, Query(max_length=32, description="YYYY-MM (UTC)")],
    format: Annotated[  # noqa: A002
        Literal["json", "csv"],
        Query(description="json, or csv (one row per line of the statement)."),
    ] = "json",
) -> Any:
    """One calendar month (UTC, `month=YYYY-MM`) of the caller's credits: the opening balance,
    purchases, charges per sku, refunds, adjustments and the closing balance; `format=csv`
    gives the same as a CSV file (section, item, credits). 422 `invalid_month` for a malformed
    month."""
    try:
        first = billing.parse_month(month)
    except ValueError as exc:
        raise ApiError(422, "invalid_month", str(exc), {"month": month[:32]}) from None
    st = billing.statement(session, principal.user_id, first)
    label = first.strftime("%Y-%m")
    if format == "csv":
        return Response(
            st.to_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="statement-{label}.csv"'},
        )
    return StatementOut(
        month=label,
        period_start=st.period_start,
        period_end=st.period_end,
        opening_balance=st.opening_balance,
        purchases=st.purchases,
        charges=[ChargeLine(sku=k, credits=v) for k, v in sorted(st.charges.items())],
        charged=st.charged,
        refunds=st.refunds,
        adjustments=st.adjustments,
        closing_balance=st.closing_balance,
        entries=st.entries,
    )


# --- billing alerts ----------------------------------------------------------------------
@router.post(
    "/billing-alerts",
    response_model=AlertCreatedOut,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 422),
    summary="A billing alert: posted, signed, to your URL when a threshold is crossed",
)
def create_alert(
    principal: Buyer, session: SessionDep, settings: SettingsDep, body: AlertIn
) -> AlertCreatedOut:
    """``balance_below`` fires when the balance goes from at or above the threshold to
    below it (once per crossing); ``spend_above`` once a calendar month (UTC) when
    the month's charges, net of refunds, go above it. The secret is shown once."""
    try:
        alert, secret = billing.create_alert(
            session,
            user_id=principal.user_id,
            kind=body.kind,
            threshold=body.threshold,
            webhook_url=body.webhook_url,
            allow_http=settings.billing_alerts_allow_http,
        )
    except billing.InvalidWebhookUrl as exc:
        raise ApiError(422, "invalid_webhook_url", exc.message) from None
    session.commit()
    return AlertCreatedOut.model_validate(
        {**AlertOut.model_validate(alert).model_dump(), "secret": secret}
    )


@router.get(
    "/billing-alerts",
    response_model=Page[AlertOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's active billing alerts, newest first",
)
def list_alerts(
    principal: Reader,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[AlertOut]:
    """The caller's active billing alerts, newest first (without their secrets)."""
    rows, next_cursor = paginate(
        session,
        select(BillingAlert).where(
            BillingAlert.user_id == principal.user_id, BillingAlert.active.is_(True)
        ),
        BillingAlert.created_at,
        BillingAlert.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[AlertOut](items=[AlertOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.delete(
    "/billing-alerts/{alert_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404),
    summary="Stop a billing alert (its deliveries stay readable to operators)",
)
def delete_alert(principal: Buyer, session: SessionDep, alert_id: uuid.UUID) -> Response:
    """Stops the billing alert: it fires no more. Its past deliveries stay readable. 404 when it is
    not the caller's."""
    if not billing.deactivate_alert(session, principal.user_id, alert_id):
        raise not_found("billing alert")
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/billing-alerts/{alert_id}/deliveries",
    response_model=Page[DeliveryOut],
    responses=error_responses(401, 403, 404, 422),
    summary="Every delivery attempt of an alert's events, newest first",
)
def list_alert_deliveries(
    cursor: Cursor,
    principal: Reader,
    session: SessionDep,
    alert_id: uuid.UUID,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> Page[DeliveryOut]:
    """Every attempt to deliver the alert's events to its webhook, newest first, with the status
    code or error of each."""
    owned = session.scalar(
        select(BillingAlert.id).where(
            BillingAlert.id == alert_id,
            BillingAlert.user_id == principal.user_id,
            BillingAlert.active.is_(True),
        )
    )
    if owned is None:
        raise not_found("billing alert")
    rows, next_cursor = paginate(
        session,
        select(BillingAlertDelivery).where(BillingAlertDelivery.alert_id == alert_id),
        BillingAlertDelivery.created_at,
        BillingAlertDelivery.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[DeliveryOut](
        items=[DeliveryOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )


# --- operators ---------------------------------------------------------------------------
@router.get(
    "/admin/reconciliation-runs",
    response_model=Page[ReconciliationRunOut],
    responses=error_responses(401, 403, 422),
    summary="Operators: every verify and repair, with findings, newest first",
)
def list_reconciliation_runs(
    cursor: Cursor,
    admin: AdminDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> Page[ReconciliationRunOut]:
    """Every run of the ledger's reconciliation (`automl-db verify`, repairs, the worker's nightly
    run) with what it found, newest first. Administrators only."""
    rows, next_cursor = paginate(
        session,
        select(ReconciliationRun),
        ReconciliationRun.started_at,
        ReconciliationRun.id,
        limit=limit,
        cursor=cursor,
    )
    adjustments: dict[uuid.UUID, list[ReconciliationAdjustmentOut]] = {}
    if rows:
        for a in session.scalars(
            select(ReconciliationAdjustment)
            .where(ReconciliationAdjustment.run_id.in_([r.id for r in rows]))
            .order_by(ReconciliationAdjustment.created_at, ReconciliationAdjustment.id)
        ):
            adjustments.setdefault(a.run_id, []).append(
                ReconciliationAdjustmentOut.model_validate(a)
            )
    items = []
    for r in rows:
        item = ReconciliationRunOut.model_validate(r)
        item.adjustments = adjustments.get(r.id, [])
        items.append(item)
    return Page[ReconciliationRunOut](items=items, next_cursor=next_cursor)
