"""A user's billing threshold: ``balance_below`` (the balance goes from >= threshold
to < threshold) or ``spend_above`` (the calendar month's charges, net of refunds,
go above it). The ledger's statement trigger fires it once per crossing
(sql/triggers/billing.sql) into ``billing_alert_events``.

``armed``: balance_below fires only when armed, and re-arms when the balance is
back at or above the threshold. ``fired_month`` (the month's first instant, UTC):
spend_above fires once a month.
``secret`` signs deliveries; it is shown once, at creation, and never in a repr.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import BillingAlertKind, billing_alert_kind


class BillingAlert(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "billing_alerts"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[BillingAlertKind] = mapped_column(billing_alert_kind)
    threshold: Mapped[int] = mapped_column(BigInteger)
    webhook_url: Mapped[str]
    secret: Mapped[str]
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    armed: Mapped[bool] = mapped_column(server_default=text("true"))
    # The first instant (UTC) of the month spend_above last fired in.
    fired_month: Mapped[dt.datetime | None]

    __table_args__ = (
        CheckConstraint("threshold >= 0", name="threshold_nonnegative"),
        CheckConstraint(
            "webhook_url ~ '^https?://[^[:space:]]+$' AND length(webhook_url) <= 2048",
            name="webhook_url_http",
        ),
        CheckConstraint("length(secret) >= 32", name="secret_long"),
        Index("ix_billing_alerts_user_id", "user_id", postgresql_where=text("active")),
        Index("ix_billing_alerts_user_id_created_at", "user_id", "created_at"),
    )
