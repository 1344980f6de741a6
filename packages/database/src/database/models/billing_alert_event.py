"""The alerts' outbox: one row per firing, written by the ledger's statement trigger
in the transaction that crossed the threshold; delivered by the worker
(``database.billing.deliver_alerts``)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, func, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import (
    AlertEventStatus,
    BillingAlertKind,
    alert_event_status,
    billing_alert_kind,
)


class BillingAlertEvent(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "billing_alert_events"

    alert_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("billing_alerts.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID]
    kind: Mapped[BillingAlertKind] = mapped_column(billing_alert_kind)
    threshold: Mapped[int] = mapped_column(BigInteger)
    # The balance (balance_below) or the month's spend (spend_above) that crossed.
    value: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[dict[str, Any]]
    status: Mapped[AlertEventStatus] = mapped_column(
        alert_event_status, server_default=AlertEventStatus.PENDING.value
    )
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    next_attempt_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    delivered_at: Mapped[dt.datetime | None]

    __table_args__ = (
        Index("ix_billing_alert_events_alert_id_created_at", "alert_id", "created_at"),
        # The worker's claim: pending rows due first.
        Index(
            "ix_billing_alert_events_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )
