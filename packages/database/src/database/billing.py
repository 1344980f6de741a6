"""Billing that explains itself (issue 16): the one module of its rules.

- **Price book**: :func:`book_in_force` (a tier's prices now, or at any instant),
  :func:`quote_job` / :func:`record_job_prices` (what a job costs, and the price
  items it was priced with, kept on the job for ever), :func:`unit_price` (the one
  lookup of an sku's price: metering's ``predicted_rows``, credits per 1,000 rows),
  :func:`set_prices` (an operator's new book; the apps' role may not write books).
- **Invoices**: :func:`record_checkout` and :func:`record_invoice` keep
  ``billing_invoices`` from the Stripe webhook's events (idempotent).
- **Statement**: :func:`statement`, a calendar month (UTC) of a user's ledger:
  opening, purchases, charges by sku, refunds, adjustments, closing.
- **Alerts**: :func:`create_alert`, :func:`deactivate_alert`; the database fires
  them (sql/triggers/billing.sql) into ``billing_alert_events``;
  :func:`deliver_alerts` (the worker) posts them, signed like Stripe's webhooks
  (:func:`sign`), with backoff, recording every attempt.
- **Reconciliation**: :func:`record_reconciliation` keeps every ``verify`` (and
  repair) as a ``reconciliation_runs`` row with its findings and adjustments.

The database enforces the rules for every client (sql/triggers/billing.sql):
overlapping books (23P01, ``PriceBookOverlap``), a change to a price in force
(ML090 ``PriceItemImmutable``), to a book in force (ML091 ``PriceBookImmutable``),
to a job's price lines (ML092 ``JobPriceImmutable``).
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import functools
import hashlib
import hmac
import io
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from database import errors, locks
from database._tx import atomic
from database.credits import LEDGER_MONTH_SQL
from database.models import (
    AlertEventStatus,
    BillingAlert,
    BillingAlertDelivery,
    BillingAlertEvent,
    BillingAlertKind,
    BillingInvoice,
    InvoiceStatus,
    JobPriceItem,
    PriceBook,
    PriceItem,
    PriceUnit,
    ReconciliationAdjustment,
    ReconciliationKind,
    ReconciliationRun,
    User,
    UserTier,
)

__all__ = [
    "Book",
    "Price",
    "Quote",
    "Statement",
    "book_in_force",
    "create_alert",
    "deactivate_alert",
    "deliver_alerts",
    "parse_month",
    "price_rows",
    "quote_job",
    "record_checkout",
    "record_invoice",
    "record_job_prices",
    "record_reconciliation",
    "set_prices",
    "sign",
    "statement",
    "unit_price",
]

#: The sku of a job's base price (one per run); node types are skus of their own.
SKU_JOB = "job"
SKU_PREDICTED_ROWS = "predicted_rows"
SKU_BATCH_ROWS = "batch_rows"
SKU_STORAGE = "storage_gb_month"
#: An evaluation run (POST /v1/evaluations), unit job (c16b00000001 added it at 2).
SKU_EVALUATION = "evaluation"
_SKU = re.compile(r"[a-z][a-z0-9_]{0,62}")
#: The unit row-priced skus are sold in.
ROWS_PER_UNIT = 1000


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- the price book ------------------------------------------------------------------
@dataclass(frozen=True)
class Price:
    item_id: uuid.UUID
    sku: str
    unit: PriceUnit
    credits_per_unit: int


@dataclass(frozen=True)
class Book:
    id: uuid.UUID
    tier: UserTier
    currency: str
    effective_from: dt.datetime
    effective_to: dt.datetime | None
    items: Mapping[str, Price]

    def price(self, sku: str) -> Price:
        found = self.items.get(sku)
        if found is None:
            raise errors.NoPriceBook(
                f"the {self.tier} price book {self.id} has no price for sku {sku!r}"
            )
        return found


def _load_book(session: Session | Connection, book: PriceBook | Any) -> Book:
    rows = session.execute(
        select(PriceItem.id, PriceItem.sku, PriceItem.unit, PriceItem.credits_per_unit).where(
            PriceItem.price_book_id == book.id
        )
    ).all()
    return Book(
        id=book.id,
        tier=UserTier(book.tier),
        currency=book.currency,
        effective_from=book.effective_from,
        effective_to=book.effective_to,
        items={r.sku: Price(r.id, r.sku, PriceUnit(r.unit), r.credits_per_unit) for r in rows},
    )


def book_in_force(
    session: Session | Connection, tier: UserTier | str, at: dt.datetime | None = None
) -> Book:
    """The ``tier``'s book in force at ``at`` (default: now); ``NoPriceBook`` if none."""
    when = at or _now()
    row = session.execute(
        select(
            PriceBook.id,
            PriceBook.tier,
            PriceBook.currency,
            PriceBook.effective_from,
            PriceBook.effective_to,
        )
        .where(
            PriceBook.tier == UserTier(tier),
            PriceBook.effective_from <= when,
            (PriceBook.effective_to.is_(None)) | (PriceBook.effective_to > when),
        )
        .order_by(PriceBook.effective_from.desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        raise errors.NoPriceBook(f"no {UserTier(tier)} price book is in force at {when}")
    return _load_book(session, row)


def books(session: Session | Connection, tier: UserTier | str | None = None) -> list[Book]:
    """Every book (of ``tier``), oldest first."""
    query = select(
        PriceBook.id,
        PriceBook.tier,
        PriceBook.currency,
        PriceBook.effective_from,
        PriceBook.effective_to,
    ).order_by(PriceBook.tier, PriceBook.effective_from)
    if tier is not None:
        query = query.where(PriceBook.tier == UserTier(tier))
    return [_load_book(session, row) for row in session.execute(query).all()]


def unit_price(
    session: Session | Connection,
    *,
    tier: UserTier | str,
    sku: str,
    at: dt.datetime | None = None,
) -> int:
    """Credits per unit of ``sku`` for ``tier`` (``predicted_rows``: per 1,000 rows).

    The one pricing lookup the other systems call (metering prices predictions
    with ``sku="predicted_rows"``)."""
    return book_in_force(session, tier, at).price(sku).credits_per_unit


def price_rows(
    session: Session | Connection,
    *,
    tier: UserTier | str,
    rows: int,
    sku: str = SKU_PREDICTED_ROWS,
    at: dt.datetime | None = None,
) -> int:
    """Credits for ``rows`` rows of a row-priced sku: rounded up to a whole credit."""
    if rows <= 0:
        return 0
    per_unit = unit_price(session, tier=tier, sku=sku, at=at)
    return -(-rows * per_unit // ROWS_PER_UNIT)


@dataclass(frozen=True)
class Quote:
    """What a job costs under ``book``: (price, quantity) lines."""

    book: Book
    lines: tuple[tuple[Price, int], ...]

    @property
    def total(self) -> int:
        return sum(p.credits_per_unit * q for p, q in self.lines)


def quote_job(
    book: Book, node_types: Iterable[str], extra: Iterable[tuple[str, int]] = ()
) -> Quote:
    """A run's price: the ``job`` sku once plus each node's type, plus ``extra``
    (sku, quantity) lines (an automl node's started minutes: ``automl_minute``)."""
    counts = Counter(str(getattr(t, "value", t)) for t in node_types)
    for sku, quantity in extra:
        counts[sku] += quantity
    lines = [(book.price(SKU_JOB), 1)]
    lines.extend((book.price(sku), n) for sku, n in sorted(counts.items()) if n > 0)
    return Quote(book=book, lines=tuple(lines))


def record_job_prices(session: Session, job_id: uuid.UUID, quote: Quote) -> None:
    """Keep the price items ``job_id`` was priced with (in the caller's transaction)."""
    rows = [
        {"job_id": job_id, "price_item_id": p.item_id, "quantity": q}
        for p, q in quote.lines
        if q > 0
    ]
    if rows:
        session.execute(insert(JobPriceItem), rows)


def job_prices(session: Session, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The lines a job was priced with: sku, unit, credits per unit, quantity, credits."""
    rows = session.execute(
        select(
            PriceItem.sku,
            PriceItem.unit,
            PriceItem.credits_per_unit,
            JobPriceItem.quantity,
            JobPriceItem.credits,
            PriceItem.price_book_id,
        )
        .join(PriceItem, PriceItem.id == JobPriceItem.price_item_id)
        .where(JobPriceItem.job_id == job_id)
        .order_by(PriceItem.sku)
    ).all()
    return [dict(r._mapping) for r in rows]


def set_prices(
    session: Session,
    *,
    tier: UserTier | str,
    prices: Mapping[str, int],
    units: Mapping[str, PriceUnit | str] | None = None,
    effective_from: dt.datetime | None = None,
    description: str | None = None,
) -> Book:
    """A new book for ``tier`` from ``effective_from`` (default now): the book in force
    then, with ``prices`` (sku -> credits per unit) changed or added (``units`` for a
    new sku). The book in force is closed at that instant; an old job keeps the
    items it was priced with. An operator's act (the apps' role may not write price
    books: ``PermissionDenied``). One transaction (a savepoint in the caller's)."""
    tier = UserTier(tier)
    for sku, credits in prices.items():
        if not isinstance(sku, str) or not _SKU.fullmatch(sku):
            raise errors.InvalidValue(
                f"sku {sku[:70]!r} must be lower-case letters, digits and _ (at most 63)"
            )
        if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
            raise errors.InvalidValue(f"the price of {sku!r} must be a whole number >= 0")
    with atomic(session):
        start = effective_from or session.execute(select(func.now())).scalar_one()
        # One writer of a tier's books at a time (the exclusion constraint decides too).
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('price-book:' || :t, 0))"),
            {"t": tier.value},
        )
        try:
            current: Book | None = book_in_force(session, tier, start)
        except errors.NoPriceBook:
            current = None
        items: dict[str, tuple[PriceUnit, int]] = {
            sku: (p.unit, p.credits_per_unit)
            for sku, p in (current.items if current else {}).items()
        }
        for sku, credits in prices.items():
            unit = (units or {}).get(sku)
            if unit is None and sku not in items:
                raise errors.InvalidValue(f"sku {sku!r} is new: give its unit")
            items[sku] = (PriceUnit(unit) if unit is not None else items[sku][0], credits)
        if current is not None:
            session.execute(
                update(PriceBook)
                .where(PriceBook.id == current.id)
                .values(effective_to=start)
                .execution_options(synchronize_session=False)
            )
        book_id = session.execute(
            insert(PriceBook)
            .values(
                tier=tier,
                currency=current.currency if current else "usd",
                effective_from=start,
                effective_to=current.effective_to if current else None,
                description=description,
            )
            .returning(PriceBook.id)
        ).scalar_one()
        session.execute(
            insert(PriceItem),
            [
                {"price_book_id": book_id, "sku": sku, "unit": unit, "credits_per_unit": credits}
                for sku, (unit, credits) in sorted(items.items())
            ],
        )
        row = session.execute(select(PriceBook).where(PriceBook.id == book_id)).scalar_one()
        return _load_book(session, row)


# --- invoices --------------------------------------------------------------------------
def _ts(value: Any) -> dt.datetime | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    try:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _text(value: Any, limit: int = 2048) -> str | None:
    return value if isinstance(value, str) and value.strip() and len(value) <= limit else None


def _amount(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _currency(value: Any) -> str:
    return (
        value.lower() if isinstance(value, str) and len(value) == 3 and value.isalpha() else "usd"
    )


_STATUS_RANK = {
    InvoiceStatus.DRAFT: 0,
    InvoiceStatus.OPEN: 1,
    InvoiceStatus.PAID: 2,
    InvoiceStatus.VOID: 2,
    InvoiceStatus.UNCOLLECTIBLE: 2,
}


def record_checkout(
    session: Session, user_id: uuid.UUID, obj: Mapping[str, Any], entry_id: uuid.UUID | None
) -> uuid.UUID | None:
    """Cache a paid checkout session as an invoice row (its ``invoice`` id when Stripe
    made one, else the session's id), linked to the ledger entry it credited.
    Idempotent: a second event fills what the first did not know. None when the
    Stripe id is already another user's invoice (left as it is)."""
    session_id = _text(obj.get("id"), 255) or ""
    invoice = obj.get("invoice")
    if isinstance(invoice, dict):
        invoice = invoice.get("id")
    stripe_id = _text(invoice, 255) or session_id
    values = {
        "user_id": user_id,
        "stripe_id": stripe_id,
        "checkout_session_id": session_id or None,
        "amount_cents": _amount(obj.get("amount_total")),
        "currency": _currency(obj.get("currency")),
        "status": InvoiceStatus.PAID,
        "credit_transaction_id": entry_id,
    }
    stmt = pg_insert(BillingInvoice).values(**values)
    return session.execute(
        stmt.on_conflict_do_update(
            index_elements=["stripe_id"],
            set_={
                "checkout_session_id": func.coalesce(
                    BillingInvoice.checkout_session_id, stmt.excluded.checkout_session_id
                ),
                "credit_transaction_id": func.coalesce(
                    BillingInvoice.credit_transaction_id, stmt.excluded.credit_transaction_id
                ),
                "status": InvoiceStatus.PAID,
            },
            where=BillingInvoice.user_id == stmt.excluded.user_id,
        ).returning(BillingInvoice.id)
    ).scalar_one_or_none()


class InvoiceOwnerUnknown(Exception):
    """An invoice event that names no user this database knows."""


def record_invoice(session: Session, obj: Mapping[str, Any]) -> uuid.UUID:
    """Cache an ``invoice.*`` event's invoice (number, amount, status, period, hosted
    URL). The user: the row already cached for it (a checkout made it), or
    ``metadata.user_id``. A status never goes back (paid stays paid when an older
    ``invoice.finalized`` arrives late). Raises ``InvoiceOwnerUnknown``."""
    stripe_id = _text(obj.get("id"), 255)
    if stripe_id is None:
        raise InvoiceOwnerUnknown("the invoice has no id")
    try:
        status = InvoiceStatus(str(obj.get("status")))
    except ValueError:
        status = InvoiceStatus.OPEN
    existing = session.execute(
        select(BillingInvoice.id, BillingInvoice.user_id, BillingInvoice.status).where(
            BillingInvoice.stripe_id == stripe_id
        )
    ).one_or_none()
    paid = obj.get("amount_paid")
    amount = _amount(paid if status is InvoiceStatus.PAID and paid else obj.get("amount_due"))
    start, end = _ts(obj.get("period_start")), _ts(obj.get("period_end"))
    if start is not None and end is not None and end < start:
        end = None
    fields: dict[str, Any] = {
        "number": _text(obj.get("number"), 255),
        "amount_cents": amount,
        "currency": _currency(obj.get("currency")),
        "period_start": start,
        "period_end": end,
        "hosted_url": _text(obj.get("hosted_invoice_url")),
    }
    if (
        fields["period_start"]
        and fields["period_end"]
        and fields["period_end"] < fields["period_start"]
    ):
        fields["period_end"] = None
    if existing is not None:
        keep = {k: v for k, v in fields.items() if v is not None}
        if _STATUS_RANK[status] >= _STATUS_RANK[InvoiceStatus(existing.status)]:
            keep["status"] = status
        if keep:
            session.execute(
                update(BillingInvoice).where(BillingInvoice.id == existing.id).values(**keep)
            )
        found: uuid.UUID = existing.id
        return found
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    try:
        user_id = uuid.UUID(str(meta.get("user_id")))  # type: ignore[union-attr]
    except ValueError:
        raise InvoiceOwnerUnknown(f"invoice {stripe_id} names no user (metadata.user_id)") from None
    if session.scalar(select(User.id).where(User.id == user_id)) is None:
        raise InvoiceOwnerUnknown(f"invoice {stripe_id} names an unknown user {user_id}")
    stmt = pg_insert(BillingInvoice).values(
        user_id=user_id, stripe_id=stripe_id, status=status, **fields
    )
    new_id = session.execute(
        stmt.on_conflict_do_nothing(index_elements=["stripe_id"]).returning(BillingInvoice.id)
    ).scalar_one_or_none()
    return (
        new_id
        or session.execute(
            select(BillingInvoice.id).where(BillingInvoice.stripe_id == stripe_id)
        ).scalar_one()
    )


# --- the monthly statement -------------------------------------------------------------
def parse_month(value: str) -> dt.date:
    """``YYYY-MM`` (years 2000-9999) as the month's first day; ``ValueError`` otherwise."""
    if not isinstance(value, str) or len(value) != 7 or value[4] != "-":
        raise ValueError("month must be YYYY-MM")
    year, month = value[:4], value[5:]
    if not (year.isdigit() and month.isdigit() and year.isascii() and month.isascii()):
        raise ValueError("month must be YYYY-MM")
    y, m = int(year), int(month)
    if not 2000 <= y <= 9998 or not 1 <= m <= 12:
        raise ValueError("month must be YYYY-MM with a year from 2000 and a month 01-12")
    return dt.date(y, m, 1)


def month_span(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The month's first instant and the next month's, in UTC."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    days = calendar.monthrange(month.year, month.month)[1]
    return start, start + dt.timedelta(days=days)


@dataclass
class Statement:
    month: dt.date
    opening_balance: int
    purchases: int
    #: Credits charged, by sku (node types, ``job``, ...; ``unpriced`` for charges of
    #: jobs priced before the price book): positive numbers.
    charges: dict[str, int]
    refunds: int
    adjustments: int
    closing_balance: int
    entries: int
    period_start: dt.datetime = field(default_factory=_now)
    period_end: dt.datetime = field(default_factory=_now)

    @property
    def charged(self) -> int:
        return sum(self.charges.values())

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["section", "item", "credits"])
        w.writerow(["opening_balance", "", self.opening_balance])
        w.writerow(["purchases", "", self.purchases])
        for sku, credits in sorted(self.charges.items()):
            w.writerow(["charge", sku, -credits])
        w.writerow(["refunds", "", self.refunds])
        w.writerow(["adjustments", "", self.adjustments])
        w.writerow(["closing_balance", "", self.closing_balance])
        return out.getvalue()


# One statement, one snapshot: the movements, the charges by sku and the month's
# last balance_after agree even while entries are being written. Each part names the
# month as ix_credit_transactions_user_id_month does ({month}, c16g00000001): the
# month's entries are one key of it; an opening or closing balance is the last entry
# of the latest month before (or up to) it, each month's entries sorted.
_MONTH = LEDGER_MONTH_SQL.format("t.created_at")
_STATEMENT = text(
    """
WITH month AS (
  SELECT t.id, t.type, t.amount, t.job_id FROM credit_transactions AS t
   WHERE t.user_id = :u AND {month} = :m AND t.created_at >= :s AND t.created_at < :e
), c AS (
  SELECT m.job_id, -m.amount AS charged FROM month AS m WHERE m.type = 'consumption'
), l AS (
  SELECT c.job_id, i.sku, jp.credits
    FROM c JOIN job_price_items AS jp ON jp.job_id = c.job_id
    JOIN price_items AS i ON i.id = jp.price_item_id
), by_sku AS (
  SELECT l.sku, sum(l.credits)::bigint AS credits FROM l GROUP BY l.sku
  UNION ALL
  SELECT 'unpriced', sum(c.charged - coalesce((SELECT sum(l.credits) FROM l
                                               WHERE l.job_id = c.job_id), 0))::bigint
    FROM c
)
SELECT
  (SELECT t.balance_after FROM credit_transactions AS t
    WHERE t.user_id = :u AND {month} < :m
    ORDER BY {month} DESC, t.created_at DESC, t.id DESC LIMIT 1) AS opening,
  (SELECT t.balance_after FROM credit_transactions AS t
    WHERE t.user_id = :u AND {month} <= :m
    ORDER BY {month} DESC, t.created_at DESC, t.id DESC LIMIT 1) AS closing,
  (SELECT coalesce(sum(m.amount), 0) FROM month AS m WHERE m.type = 'purchase') AS purchases,
  (SELECT coalesce(sum(m.amount), 0) FROM month AS m WHERE m.type = 'refund') AS refunds,
  (SELECT coalesce(sum(m.amount), 0) FROM month AS m WHERE m.type = 'adjustment') AS adjustments,
  (SELECT count(*) FROM month) AS entries,
  (SELECT coalesce(jsonb_object_agg(b.sku, b.credits), '{}'::jsonb)
     FROM by_sku AS b WHERE coalesce(b.credits, 0) <> 0) AS charges
""".replace("{month}", _MONTH)
)


def statement(session: Session | Connection, user_id: uuid.UUID, month: dt.date) -> Statement:
    """The user's ledger for a calendar month (UTC). opening + purchases - charges + refunds +
    adjustments = closing = the month's last ``balance_after``."""
    start, end = month_span(month)
    utc_month = start.astimezone(dt.UTC).replace(tzinfo=None)
    m = session.execute(_STATEMENT, {"u": user_id, "s": start, "e": end, "m": utc_month}).one()
    charges = {str(k): int(v) for k, v in (m.charges or {}).items()}
    opening = m.opening or 0
    closing = m.closing if m.closing is not None else opening
    return Statement(
        month=month,
        opening_balance=opening,
        purchases=int(m.purchases),
        charges=charges,
        refunds=int(m.refunds),
        adjustments=int(m.adjustments),
        closing_balance=closing,
        entries=int(m.entries),
        period_start=start,
        period_end=end,
    )


# --- billing alerts --------------------------------------------------------------------
class InvalidWebhookUrl(errors.InvalidValue):
    """A billing alert's webhook URL that is not https (or http to a local host, where
    allowed), or is malformed."""


def check_webhook_url(url: str, *, allow_http: bool = False) -> str:
    """``url`` if it is an absolute https URL with a host (``allow_http``: http too,
    for local receivers in development and tests); ``InvalidWebhookUrl`` otherwise."""
    if not isinstance(url, str) or not url or len(url) > 2048 or any(c.isspace() for c in url):
        raise InvalidWebhookUrl("webhook_url must be an https URL of at most 2048 characters")
    if "\x00" in url:
        raise InvalidWebhookUrl("webhook_url contains a NUL byte")
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.username or parts.password:
        raise InvalidWebhookUrl("webhook_url must be https://host/... (no credentials)")
    try:
        port = parts.port
    except ValueError:
        raise InvalidWebhookUrl("webhook_url has an invalid port") from None
    del port
    return url


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def create_alert(
    session: Session,
    *,
    user_id: uuid.UUID,
    kind: BillingAlertKind | str,
    threshold: int,
    webhook_url: str,
    allow_http: bool = False,
) -> tuple[BillingAlert, str]:
    """A new alert and its signing secret (shown once). balance_below starts armed when
    the balance is at or above the threshold (it fires on the way down)."""
    kind = BillingAlertKind(kind)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise errors.InvalidValue("threshold must be a whole number >= 0")
    check_webhook_url(webhook_url, allow_http=allow_http)
    secret = new_secret()
    with atomic(session):
        # The ledger trigger's lock: the alert's armed state matches the balance.
        balance = session.execute(
            select(User.credit_balance).where(User.id == user_id).with_for_update(key_share=True)
        ).scalar_one_or_none()
        if balance is None:
            raise errors.UserNotFound(f"user {user_id} does not exist")
        alert = BillingAlert(
            user_id=user_id,
            kind=kind,
            threshold=threshold,
            webhook_url=webhook_url,
            secret=secret,
            armed=balance >= threshold,
        )
        session.add(alert)
        session.flush()
    return alert, secret


#: The users' next alert thresholds (users.alert_*, kept by billing_alerts_sync)
#: against their alerts and the ledger: one row per column that differs. The month
#: is the one the row counts (alert_spend_until's), so a month that ended with no
#: entry since (the next entry counts the new one) is not drift.
_ALERT_THRESHOLD_DRIFT = text(
    """
SELECT x.user_id, c.col, c.stored, c.expected
  FROM (SELECT u.id AS user_id, u.alert_below, u.alert_rearm, u.alert_spend_above,
               u.alert_spend, u.alert_spend_until, m.month_start, e.*,
               CASE WHEN e.has_spend THEN
                   (SELECT coalesce(-sum(t.amount), 0) FROM public.credit_transactions AS t
                     WHERE t.user_id = u.id AND t.created_at >= m.month_start
                       AND t.type IN ('consumption', 'refund'))
               END AS spend
          FROM public.users AS u
         CROSS JOIN LATERAL (
               SELECT coalesce(u.alert_spend_until - interval '1 month',
                               date_trunc('month', clock_timestamp(), 'UTC')) AS month_start) AS m
         CROSS JOIN LATERAL (
               SELECT max(a.threshold) FILTER (WHERE a.kind = 'balance_below' AND a.armed)
                          AS below,
                      min(a.threshold) FILTER (WHERE a.kind = 'balance_below' AND NOT a.armed)
                          AS rearm,
                      min(a.threshold) FILTER (WHERE a.kind = 'spend_above'
                                                 AND a.fired_month IS DISTINCT FROM m.month_start)
                          AS spend_above,
                      coalesce(bool_or(a.kind = 'spend_above'), false) AS has_spend
                 FROM public.billing_alerts AS a
                WHERE a.user_id = u.id AND a.active) AS e
         WHERE (CAST(:ids AS uuid[]) IS NULL OR u.id = ANY (CAST(:ids AS uuid[])))
           AND (num_nonnulls(u.alert_below, u.alert_rearm, u.alert_spend_above, u.alert_spend,
                             u.alert_spend_until) > 0
                OR EXISTS (SELECT 1 FROM public.billing_alerts AS a
                            WHERE a.user_id = u.id AND a.active))) AS x
 CROSS JOIN LATERAL (VALUES ('alert_below', x.alert_below, x.below),
                            ('alert_rearm', x.alert_rearm, x.rearm),
                            ('alert_spend_above', x.alert_spend_above, x.spend_above),
                            ('alert_spend', x.alert_spend, x.spend),
                            ('alert_spend_until',
                             CASE WHEN x.alert_spend_until IS NOT NULL THEN 1 END,
                             CASE WHEN x.has_spend THEN 1 END)) AS c(col, stored, expected)
 WHERE c.stored IS DISTINCT FROM c.expected
 ORDER BY x.user_id, c.col
"""
)


def alert_threshold_drift(
    conn: Connection | Session, user_ids: Iterable[uuid.UUID] | None = None
) -> list[tuple[uuid.UUID, str, int | None, int | None]]:
    """Users whose next alert thresholds (users.alert_*) are not what their active
    alerts and this month's ledger say: (user, column, stored, expected), NULL as None
    (``alert_spend_until``: 1 when set). ``automl-db verify`` reports them."""
    ids = list(user_ids) if user_ids is not None else None
    rows = conn.execute(_ALERT_THRESHOLD_DRIFT, {"ids": ids}).all()
    return [(r.user_id, r.col, r.stored, r.expected) for r in rows]


def deactivate_alert(session: Session, user_id: uuid.UUID, alert_id: uuid.UUID) -> bool:
    """Stop an alert (its events and deliveries stay); False if it is not the user's.

    The user's row first, as the ledger's entries take it before an alert's row (a
    crossing updates the alert under it), and the alert's trigger then moves the
    user's thresholds (billing_alerts_sync): in the other order the two would wait
    on each other."""
    with atomic(session):
        locks.lock_users(session, [user_id])
        done = session.execute(
            update(BillingAlert)
            .where(
                BillingAlert.id == alert_id,
                BillingAlert.user_id == user_id,
                BillingAlert.active.is_(True),
            )
            .values(active=False)
            .returning(BillingAlert.id)
        ).scalar_one_or_none()
    return done is not None


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    """The ``Billing-Signature`` header: ``t=<unix time>,v1=<hex HMAC-SHA256 of
    "t.payload" under the secret>``, Stripe's scheme, so receivers can verify with
    the same code (``stripe.WebhookSignature.verify_header`` accepts it)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


#: (status code or None, error or None) for one POST.
Poster = Callable[[str, bytes, dict[str, str]], tuple[int | None, str | None]]


def _post(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float = 10.0
) -> tuple[int | None, str | None]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (https checked)
            return int(response.status), None
    except urllib.error.HTTPError as exc:
        return int(exc.code), f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
            # The same words as a receiver still silent at the batch's deadline
            # (_post_all): which of the two timers fired first is the machine's load.
            return None, f"no answer within {timeout_s:g} s"
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


#: Claim the due events: each leased for ``lease`` seconds (its next_attempt_at moved
#: on), in one short transaction, so no row lock or transaction stays open while the
#: receivers answer; a worker that dies mid-delivery leaves them to be retried.
_CLAIM = text(
    """
UPDATE billing_alert_events AS e
   SET next_attempt_at = now() + make_interval(secs => :lease)
  FROM billing_alerts AS a
 WHERE a.id = e.alert_id
   AND e.id IN (SELECT d.id FROM billing_alert_events AS d
                 WHERE d.status = 'pending' AND d.next_attempt_at <= now()
                 ORDER BY d.next_attempt_at
                 LIMIT :n
                   FOR UPDATE OF d SKIP LOCKED)
RETURNING e.id, e.alert_id, e.attempts, e.payload, a.webhook_url, a.secret
"""
)


@dataclass
class DeliveryReport:
    delivered: int = 0
    retried: int = 0
    failed: int = 0

    def __str__(self) -> str:
        return f"{self.delivered} delivered, {self.retried} to retry, {self.failed} failed"


def backoff(attempt: int, base_s: float) -> float:
    """Seconds before attempt ``attempt + 1``: base, 2x, 4x ... capped at an hour."""
    return float(min(3600.0, base_s * (2 ** max(0, attempt - 1))))


def _post_all(
    poster: Poster, posts: list[tuple[str, bytes, dict[str, str]]], deadline_s: float
) -> list[tuple[int | None, str | None]]:
    """Every post at once, each in a daemon thread, waited for at most ``deadline_s``
    in all: a receiver that has not answered by then counts as a failed attempt
    (its thread is left to end with its socket's timeout; it holds no database
    resource)."""
    results: list[tuple[int | None, str | None] | None] = [None] * len(posts)

    def one(i: int, url: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            results[i] = poster(url, body, headers)
        except Exception as exc:  # a poster's bug is the attempt's error, not the batch's
            results[i] = (None, f"{type(exc).__name__}: {str(exc)[:200]}")

    threads = [
        threading.Thread(target=one, args=(i, *p), name="billing-alert-post", daemon=True)
        for i, p in enumerate(posts)
    ]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline_s
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return [r if r is not None else (None, f"no answer within {deadline_s:g} s") for r in results]


def deliver_alerts(
    engine: Engine,
    *,
    post: Poster | None = None,
    batch: int = 20,
    max_attempts: int = 8,
    base_delay_s: float = 30.0,
    timeout_s: float = 10.0,
) -> DeliveryReport:
    """Post the due outbox rows, each signed with its alert's secret; record every
    attempt in ``billing_alert_deliveries``. A failure (no 2xx, or no answer within
    ``timeout_s``) is retried after :func:`backoff`; after ``max_attempts`` the
    event is ``failed``. Rows are claimed with ``FOR UPDATE SKIP LOCKED`` and leased
    (several workers share the work); the posts run in parallel with no transaction
    open, so one call takes at most about ``timeout_s`` however slow the receivers."""
    poster = post or functools.partial(_post, timeout_s=timeout_s)
    report = DeliveryReport()
    with engine.begin() as conn:
        rows = conn.execute(_CLAIM, {"n": batch, "lease": max(60.0, 4 * timeout_s)}).all()
    if not rows:
        return report
    now = int(time.time())
    posts = []
    for row in rows:
        body = json.dumps(row.payload, sort_keys=True, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "automl-billing-alerts/1",
            "Billing-Signature": sign(row.secret, body, now),
            "Billing-Event-Id": str(row.id),
        }
        posts.append((row.webhook_url, body, headers))
    answers = _post_all(poster, posts, timeout_s)
    with engine.begin() as conn:
        for row, (status, error) in zip(rows, answers, strict=True):
            attempt = row.attempts + 1
            ok = status is not None and 200 <= status < 300
            conn.execute(
                insert(BillingAlertDelivery).values(
                    event_id=row.id,
                    alert_id=row.alert_id,
                    attempt=attempt,
                    status_code=status,
                    error=None if ok else (error or f"HTTP {status}"),
                    succeeded=ok,
                )
            )
            if ok:
                new_status, report.delivered = AlertEventStatus.DELIVERED, report.delivered + 1
            elif attempt >= max_attempts:
                new_status, report.failed = AlertEventStatus.FAILED, report.failed + 1
            else:
                new_status, report.retried = AlertEventStatus.PENDING, report.retried + 1
            conn.execute(
                update(BillingAlertEvent)
                .where(BillingAlertEvent.id == row.id)
                .values(
                    attempts=attempt,
                    status=new_status,
                    delivered_at=func.now() if ok else None,
                    next_attempt_at=func.now()
                    + dt.timedelta(seconds=backoff(attempt, base_delay_s)),
                )
            )
    return report


# --- reconciliation runs ---------------------------------------------------------------
#: Why a repair changed a value: what the column must equal, and what recomputed it.
_REPAIR_REASONS = {
    ("users", "dataset_count"): "the user's datasets, counted again (users_repair_derived)",
    ("users", "workflow_count"): "the user's workflows, counted again (users_repair_derived)",
    ("users", "model_count"): "the user's models, counted again (users_repair_derived)",
    ("users", "storage_used_bytes"): "the bytes of the user's dataset versions and models,"
    " summed again (users_repair_derived)",
    ("model_versions", "download_count"): "the version's recorded downloads, counted again"
    " (registry_repair_derived)",
    ("registered_models", "last_version_number"): "raised to the model's highest version"
    " number, so no number is given twice (registry_repair_derived)",
}


def repair_reason(table: str, column: str) -> str:
    """The reason a reconciliation adjustment of ``table.column`` gives."""
    why = _REPAIR_REASONS.get((table, column), "recomputed from the rows it derives from")
    return f"{table}.{column} drifted from its rows: set to {why}"


def record_reconciliation(
    bind: Engine | Connection | Session,
    report: Any,
    *,
    source: str,
    started_at: dt.datetime,
    repair: bool = False,
) -> uuid.UUID:
    """Keep a ``verify`` run (a ``database.verify.Report``): its findings (drift,
    unproduced entries) and, for a repair, one adjustment row per corrected column
    with why. One INSERT of each; committed with an Engine, else in the caller's
    transaction."""
    findings: list[dict[str, Any]] = [
        {
            "user_id": str(d.user_id),
            "check": d.check,
            "stored": d.stored,
            "expected": d.expected,
            "message": d.message,
        }
        for d in report.drift
    ] + [
        {
            "entry_id": str(u.entry_id),
            "user_id": str(u.user_id),
            "check": "unproduced",
            "type": u.type,
            "amount": u.amount,
            "message": u.problem,
        }
        for u in report.unproduced
    ]

    def write(conn: Connection | Session) -> uuid.UUID:
        run_id = conn.execute(
            insert(ReconciliationRun)
            .values(
                kind=ReconciliationKind.REPAIR if repair else ReconciliationKind.VERIFY,
                source=source,
                started_at=started_at,
                finished_at=func.clock_timestamp(),
                users_checked=report.users_checked,
                drift_count=len(report.drift),
                unproduced_count=len(report.unproduced),
                repaired_count=len(report.repaired),
                ok=report.ok,
                findings=findings,
            )
            .returning(ReconciliationRun.id)
        ).scalar_one()
        repairs = list(getattr(report, "repairs", None) or [])
        if not repairs and report.repaired:  # a report without the rows' tables
            repairs = [
                SimpleNamespace(user_id=u, table="users", row_id=None, column=c, old=o, new=n)
                for u, c, o, n in report.repaired
            ]
        if repairs:
            conn.execute(
                insert(ReconciliationAdjustment),
                [
                    {
                        "run_id": run_id,
                        "user_id": r.user_id,
                        "table_name": r.table,
                        "row_id": r.row_id,
                        "column_name": r.column,
                        "old_value": r.old,
                        "new_value": r.new,
                        "reason": repair_reason(r.table, r.column),
                    }
                    for r in repairs
                ],
            )
        return run_id

    if isinstance(bind, Engine):
        with bind.begin() as conn:
            return write(conn)
    return write(bind)
