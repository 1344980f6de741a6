"""Each Stripe webhook event, stored once (seed 000's ``StripeWebhookEvent``).

The API verifies the signature, then inserts the event under Stripe's own id; a
redelivery of the same event finds the row and changes nothing. What handling the
event did is recorded on the row (``status``, ``error``), so a failure a retry
cannot fix (an unknown user, a package no longer on sale) is visible, not lost.

There is no ``updated_at``: ``processed_at`` is the time of the only change.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import CheckConstraint, Index, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin

#: What handling an event did.
EVENT_STATUSES = ("received", "processed", "ignored", "failed")


class StripeWebhookEvent(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "stripe_webhook_events"

    # Stripe's event id (evt_...): the key that makes delivery idempotent.
    stripe_event_id: Mapped[str]
    type: Mapped[str]
    livemode: Mapped[bool] = mapped_column(server_default=text("false"))
    # The event as Stripe sent it.
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(server_default=text("'received'"))
    error: Mapped[str | None]
    processed_at: Mapped[dt.datetime | None]

    __table_args__ = (
        UniqueConstraint("stripe_event_id"),
        CheckConstraint(
            "status IN ('received', 'processed', 'ignored', 'failed')", name="status_known"
        ),
        CheckConstraint("jsonb_typeof(payload) = 'object'", name="payload_is_object"),
        # Operators look for events that failed, newest first.
        Index(
            "ix_stripe_webhook_events_failed_created_at",
            "created_at",
            postgresql_where=text("status = 'failed'"),
        ),
    )
