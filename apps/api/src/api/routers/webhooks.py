"""Stripe's webhook: verified, stored once, and a completed checkout credited once.

``POST /v1/webhooks/stripe`` checks the ``Stripe-Signature`` header with the
official ``stripe`` library and ``STRIPE_WEBHOOK_SECRET``. Each event is stored in
``stripe_webhook_events`` under Stripe's event id, in the same transaction as what
it does, so a redelivery (Stripe retries until it gets a 2xx) finds the row and
changes nothing. A ``checkout.session.completed`` event whose payment is made
(``payment_status`` paid; ``checkout.session.async_payment_succeeded`` likewise)
credits ``metadata.package_id`` to ``client_reference_id`` for the payment
``payment_intent``: the ledger's unique payment reference makes that happen once
even across different events for the same payment, and a second event for a
payment already credited answers ``duplicate_payment`` (stored as ``ignored``).
The credited checkout is cached in ``billing_invoices`` (its Stripe invoice, or
the session), linked to the ledger entry; ``invoice.*`` events update that row
(number, amount, status, period, hosted URL) or add one for the invoice's
``metadata.user_id`` (``database.billing``), idempotently.

An event whose ``livemode`` is not ``STRIPE_LIVEMODE`` (default false: test mode)
is refused with 400 ``livemode_mismatch`` and not stored.

A refusal no retry can change (an unknown user or package, a package not on sale
or not for the user's tier, a deleted user) is recorded on the event as
``failed`` with the reason, and answered 200 so Stripe stops retrying; an operator
settles it. A transient failure (a lock wait) answers 503 and stores nothing, so
Stripe's retry runs it again.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Annotated, Any

import stripe
from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep
from api.errors import ApiError, error_responses
from api.schemas import WebhookOut, check_json
from database import billing, credits
from database import errors as db
from database.models import CreditTransaction, StripeWebhookEvent

log = logging.getLogger("api.webhooks")
router = APIRouter(prefix="/webhooks", tags=["webhooks"])

MAX_EVENT_BYTES = 512 * 1024
CREDITING_EVENTS = {"checkout.session.completed", "checkout.session.async_payment_succeeded"}

#: Refusals a retry of the same event cannot change: recorded, answered 200.
PERMANENT = (
    db.UserNotFound,
    db.PackageNotFound,
    db.UserDeleted,
    db.UserPurged,
    db.PackageUnavailable,
    db.PackageTierRestricted,
    db.PurchaseAmountMismatch,
    db.PaymentReferenceConflict,
)


class _Failed(Exception):
    """The event cannot be acted on, whatever the retries: the reason."""


class _NotYet(Exception):
    """A checkout whose payment has not succeeded yet (async payment methods)."""


class _AlreadyCredited(Exception):
    """Another event already credited this payment (to the same user and package)."""


def _credit(session: Session, obj: dict[str, Any]) -> None:
    """Credit the package of a paid checkout session (raises _Failed with the reason)."""
    if obj.get("payment_status") not in (None, "paid", "no_payment_required"):
        raise _NotYet()
    user_ref = obj.get("client_reference_id")
    package_ref = (obj.get("metadata") or {}).get("package_id")
    payment = obj.get("payment_intent")
    if isinstance(payment, dict):  # an expanded PaymentIntent
        payment = payment.get("id")
    try:
        user_id = uuid.UUID(str(user_ref))
        package_id = uuid.UUID(str(package_ref))
    except ValueError:
        raise _Failed("client_reference_id and metadata.package_id must be ids") from None
    if not isinstance(payment, str) or not payment.strip():
        raise _Failed("the session has no payment_intent")
    # Under the user's row lock (held to the commit; purchase takes it too), so a
    # concurrent event for the same payment waits here, then finds this one's entry.
    credits.lock_users(session, [user_id])
    credited = session.execute(
        select(CreditTransaction.id, CreditTransaction.user_id, CreditTransaction.package_id)
        .where(credits.payment_is(payment))
        .limit(1)
    ).one_or_none()
    if credited is not None and (credited.user_id, credited.package_id) == (user_id, package_id):
        raise _AlreadyCredited(f"payment {payment} was already credited (entry {credited.id})")
    # Not credited yet, or credited to another user or package: purchase refuses that
    # (PaymentReferenceConflict, recorded as failed).
    # No description (issue 16, the ledger's weight): "purchase of <package>" is
    # derived for display, and the session's id is the invoice row's, linked below.
    entry = credits.purchase(session, user_id, package_id, payment)
    # The invoice (or the paid session) cached, linked to the entry it credited.
    billing.record_checkout(session, user_id, obj, entry.id)


def _handle(session: Session, event: dict[str, Any], expected_livemode: bool) -> WebhookOut:
    event_id = str(event.get("id") or "")
    event_type = str(event.get("type") or "")
    if not event_id or len(event_id) > 255 or not event_type or len(event_type) > 255:
        raise ApiError(422, "invalid_event", "the event has no usable id or type")
    livemode = event.get("livemode")
    if livemode is not expected_livemode:
        # A live event on a test server (or the reverse) names users and packages of
        # another world: refused and not stored; STRIPE_LIVEMODE says which we take.
        mode = "live" if expected_livemode else "test"
        raise ApiError(
            400,
            "livemode_mismatch",
            f"this server takes Stripe {mode}-mode events only (STRIPE_LIVEMODE)",
            {
                "expected_livemode": expected_livemode,
                "livemode": livemode if isinstance(livemode, bool) else None,
            },
        )
    # Stored first: a concurrent delivery of the same event waits here on the unique
    # key, then finds the row, and answers "duplicate".
    inserted = session.execute(
        insert(StripeWebhookEvent)
        .values(
            stripe_event_id=event_id,
            type=event_type,
            livemode=livemode,
            payload=event,
        )
        .on_conflict_do_nothing(index_elements=["stripe_event_id"])
        .returning(StripeWebhookEvent.id)
    ).scalar_one_or_none()
    if inserted is None:
        session.rollback()
        return WebhookOut(event_id=event_id, status="duplicate")
    status, error = "ignored", None
    answer: str | None = None
    if event_type.startswith("invoice."):
        obj = (event.get("data") or {}).get("object") or {}
        try:
            billing.record_invoice(session, obj if isinstance(obj, dict) else {})
            status = "processed"
        except billing.InvoiceOwnerUnknown as exc:
            status, error = "failed", str(exc)
    elif event_type in CREDITING_EVENTS:
        obj = (event.get("data") or {}).get("object") or {}
        try:
            _credit(session, obj if isinstance(obj, dict) else {})
            status = "processed"
        except _NotYet:
            status = "ignored"
        except _AlreadyCredited as exc:
            # Stored as ignored (nothing was done), answered duplicate_payment.
            answer, status, error = "duplicate_payment", "ignored", str(exc)
        except _Failed as exc:
            status, error = "failed", str(exc)
        except PERMANENT as exc:
            # The purchase's savepoint rolled back; the event row stays.
            status, error = "failed", f"{type(exc).__name__}: {exc.message}"
    session.execute(
        update(StripeWebhookEvent)
        .where(StripeWebhookEvent.id == inserted)
        .values(status=status, error=error, processed_at=func.now())
    )
    session.commit()
    if status == "failed":
        log.warning("stripe event %s (%s) failed: %s", event_id, event_type, error)
    return WebhookOut(event_id=event_id, status=answer or status)  # type: ignore[arg-type]


@router.post(
    "/stripe",
    response_model=WebhookOut,
    responses=error_responses(400, 413, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "description": "A Stripe event, as Stripe sends it.",
                    },
                    "example": {
                        "id": "evt_1Q2w3E4r5T6y",
                        "type": "checkout.session.completed",
                        "data": {"object": {"id": "cs_test_a1B2c3", "payment_status": "paid"}},
                    },
                }
            },
        }
    },
    summary="Stripe webhook endpoint",
)
async def stripe_webhook(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    stripe_signature: Annotated[
        str | None,
        Header(
            alias="Stripe-Signature", description="Stripe's signature of the body (t=...,v1=...)."
        ),
    ] = None,
) -> WebhookOut:
    """Verified with ``STRIPE_WEBHOOK_SECRET`` (400 ``invalid_signature`` otherwise;
    503 ``webhooks_not_configured`` without a secret); an event of the other Stripe
    mode than ``STRIPE_LIVEMODE`` is 400 ``livemode_mismatch``. Idempotent per
    event (``duplicate``), and per payment (``duplicate_payment``)."""
    secret = settings.stripe_webhook_secret
    if secret is None or not secret.get_secret_value().strip():
        raise ApiError(
            503, "webhooks_not_configured", "STRIPE_WEBHOOK_SECRET is not set on this server"
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_EVENT_BYTES:
        raise ApiError(413, "too_large", "the event is too large")
    payload = b""
    async for chunk in request.stream():
        payload += chunk
        if len(payload) > MAX_EVENT_BYTES:
            raise ApiError(413, "too_large", "the event is too large")
    try:
        # The library's own check (HMAC-SHA256 over "timestamp.payload", and the
        # timestamp's age). The event is parsed here, not by construct_event, which
        # fails on a signed body that is valid JSON but not an object.
        stripe.WebhookSignature.verify_header(
            payload,
            stripe_signature,
            secret.get_secret_value(),
            settings.stripe_webhook_tolerance_s,
        )
        event = json.loads(payload)
        if not isinstance(event, dict):
            raise ValueError("not an object")
        check_json(event)
    except stripe.SignatureVerificationError:
        raise ApiError(400, "invalid_signature", "the Stripe signature does not verify") from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_payload", "the event is not a JSON object") from None
    return await run_in_threadpool(_handle, session, event, settings.stripe_livemode)
