"""What one aggregation charged: the usage of one user's deployment and sku over a
period, and the ledger entry it was charged in. Append-only (ML087).

A charge covers every ``usage_events`` row of its user, deployment and sku whose
``created_at`` lies in ``[period_start, period_end)``; the periods of one user
follow each other (``usage_meters.charged_through``). ``amount_micro`` is the cost
of those events in micro-credits; ``credits`` the whole credits charged (the
remainder carries to the user's next charge, so the credits charged are always
``floor(sum(amount_micro) / 10**6)``). A charge of 0 credits has no ledger entry.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import UsageSku, usage_sku


class UsageCharge(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "usage_charges"

    # Time-ordered ids (uuidv7(), c16d00000001, issue 16's weight): charges are
    # written in time order, so the primary key fills at its right edge.
    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("uuidv7()"), sort_order=-100
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    deployment_id: Mapped[uuid.UUID | None]
    sku: Mapped[UsageSku] = mapped_column(usage_sku)
    period_start: Mapped[dt.datetime]
    period_end: Mapped[dt.datetime]
    quantity: Mapped[int] = mapped_column(BigInteger)
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    credits: Mapped[int]
    #: The ledger entry (no foreign key: one would make ``TRUNCATE credit_transactions``
    #: fail on the reference before the ledger's own refusal, ML002; both tables are
    #: append-only and ``automl-db verify`` checks the link both ways).
    ledger_entry_id: Mapped[uuid.UUID | None]
    #: ``usage:<user>:<deployment>:<sku>:<period_start>:<period_end>`` on the charges
    #: written before c16d00000001; NULL since (issue 16, the weight): the key is a
    #: function of the row, whose unique ``(user_id, period_start, deployment_id,
    #: sku)`` makes a retried aggregation never charge twice.
    idempotency_key: Mapped[str | None]

    __table_args__ = (
        CheckConstraint("period_end > period_start", name="period_order"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("amount_micro >= 0", name="amount_nonnegative"),
        CheckConstraint("credits >= 0", name="credits_nonnegative"),
        CheckConstraint(
            "(credits = 0) = (ledger_entry_id IS NULL)", name="ledger_entry_iff_credits"
        ),
        # One charge per user, period start, deployment and sku (a NULL deployment is
        # one value): what the idempotency key said, in 60 bytes instead of 270 (the
        # key's text in the row and its unique index; c16d00000001). It also serves
        # the user's foreign key and the reads by user and period (the index
        # ix_usage_charges_user_id_period_start it replaces).
        UniqueConstraint(
            "user_id",
            "period_start",
            "deployment_id",
            "sku",
            postgresql_nulls_not_distinct=True,
        ),
        UniqueConstraint("ledger_entry_id"),
    )


__all__ = ["UsageCharge"]
