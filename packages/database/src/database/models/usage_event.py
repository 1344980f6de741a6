"""One billable unit of use: ``quantity`` of ``sku`` (rows predicted online, rows of a
batch...) at ``unit_price_micro`` micro-credits each (10**-6 credit; the price when
it was used). Append-only (ML086).

``created_at`` is the database's ``clock_timestamp()`` taken under the user's meter
lock (``usage_events_before_insert``), which also adds the cost to
``usage_meters.pending_micro``: the charge of a period therefore sees every event
dated before it, and none arrives late. Which charge covered an event is not
written here (the table stays append-only): a ``usage_charges`` row covers every
event of its user, deployment and sku dated in ``[period_start, period_end)``.
"""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import UsageSku, usage_sku

MAX_IDEMPOTENCY_KEY = 200


class UsageEvent(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "usage_events"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    #: The deployment used (no foreign key: usage outlives it); NULL for use of none.
    deployment_id: Mapped[uuid.UUID | None]
    api_key_id: Mapped[uuid.UUID | None]
    sku: Mapped[UsageSku] = mapped_column(usage_sku)
    quantity: Mapped[int] = mapped_column(BigInteger)
    unit_price_micro: Mapped[int] = mapped_column(BigInteger)
    #: Makes a retried record a no-op (e.g. ``request:<request id>:predicted_rows``).
    idempotency_key: Mapped[str]

    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("unit_price_micro >= 0", name="unit_price_nonnegative"),
        CheckConstraint(
            f"char_length(idempotency_key) BETWEEN 1 AND {MAX_IDEMPOTENCY_KEY}",
            name="idempotency_key_length",
        ),
        UniqueConstraint("idempotency_key"),
        Index("ix_usage_events_user_id_created_at", "user_id", "created_at"),
    )


__all__ = ["MAX_IDEMPOTENCY_KEY", "UsageEvent"]
