"""A Stripe invoice (or a paid checkout session), cached from the webhook's
``invoice.*`` and ``checkout.session.completed`` events, linked to the ledger entry
it credited."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import InvoiceStatus, invoice_status


class BillingInvoice(IDMixin, TimestampMixin, Base):
    __tablename__ = "billing_invoices"

    # RESTRICT: financial history outlives the account (a purged user is a tombstone).
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    # in_... (an invoice) or cs_... (a checkout session without one).
    stripe_id: Mapped[str]
    checkout_session_id: Mapped[str | None]
    number: Mapped[str | None]
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str]
    status: Mapped[InvoiceStatus] = mapped_column(invoice_status)
    period_start: Mapped[dt.datetime | None]
    period_end: Mapped[dt.datetime | None]
    hosted_url: Mapped[str | None]
    # The ledger entry it credited. No foreign key: a table referring to the ledger
    # would make TRUNCATE of it fail on the reference before the ledger's own refusal
    # (ML002); the ledger is append-only, so the entry never goes away.
    credit_transaction_id: Mapped[uuid.UUID | None]

    __table_args__ = (
        UniqueConstraint("stripe_id"),
        CheckConstraint("amount_cents >= 0", name="amount_nonnegative"),
        CheckConstraint("currency ~ '^[a-z]{3}$'", name="currency_iso"),
        CheckConstraint(
            "period_end IS NULL OR period_start IS NULL OR period_end >= period_start",
            name="period_span",
        ),
        Index("ix_billing_invoices_user_id_created_at", "user_id", "created_at"),
        Index(
            "ix_billing_invoices_credit_transaction_id",
            "credit_transaction_id",
            postgresql_where="credit_transaction_id IS NOT NULL",
        ),
        Index(
            "ix_billing_invoices_checkout_session_id",
            "checkout_session_id",
            unique=True,
            postgresql_where="checkout_session_id IS NOT NULL",
        ),
    )
