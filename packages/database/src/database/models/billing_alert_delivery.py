"""Each attempt to deliver an alert event: when, the HTTP status or the error."""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin


class BillingAlertDelivery(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "billing_alert_deliveries"

    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("billing_alert_events.id", ondelete="CASCADE")
    )
    alert_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("billing_alerts.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    status_code: Mapped[int | None]
    error: Mapped[str | None]
    succeeded: Mapped[bool]

    __table_args__ = (
        Index("ix_billing_alert_deliveries_alert_id_created_at", "alert_id", "created_at"),
        Index("ix_billing_alert_deliveries_event_id", "event_id"),
    )
