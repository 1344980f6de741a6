"""User accounts, with the aggregates the triggers keep for them."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, CheckConstraint, FetchedValue, Index, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin, big_counter_column, counter_column
from database.models.enums import (
    OAuthProvider,
    UserRole,
    UserTier,
    oauth_provider,
    user_role,
    user_tier,
)

if TYPE_CHECKING:
    from database.models.credit_transaction import CreditTransaction
    from database.models.dataset import Dataset
    from database.models.experiment import Experiment
    from database.models.job import Job
    from database.models.model import Model
    from database.models.user_tutorial_progress import UserTutorialProgress
    from database.models.workflow import Workflow

#: The per-user permissions (database.identity.PERMISSIONS), all true by default.
PERMISSION_COLUMNS = ("can_upload", "can_train", "can_deploy", "can_download", "can_buy")
#: The columns only an admin (never the user themself) or the schema's owner changes
#: (sql/triggers/identity.sql, ML100-ML102); the apps' role may not INSERT them.
PRIVILEGE_COLUMNS = ("role", "is_active", *PERMISSION_COLUMNS)

#: Columns only triggers write, NULL until they do: never in an ORM INSERT (the apps'
#: role may not insert them) nor SET by an UPDATE, and read back after a write.
_TRIGGER_KEPT: dict[str, Any] = {
    "server_default": FetchedValue(),
    "server_onupdate": FetchedValue(),
}

#: The user's next billing alert thresholds, kept by billing_alerts_sync
#: (sql/triggers/billing.sql, c16c00000001); all NULL for a user without alerts.
ALERT_COLUMNS = (
    "alert_below",
    "alert_rearm",
    "alert_spend_above",
    "alert_spend",
    "alert_spend_until",
)

# The columns only the triggers write (sql/triggers/users_derived.sql).
DERIVED_COLUMNS = (
    "credit_balance",
    "dataset_count",
    "workflow_count",
    "model_count",
    "storage_used_bytes",
    # The next billing alert thresholds and the month's spend (sql/triggers/billing.sql).
    *ALERT_COLUMNS,
)


class User(IDMixin, TimestampMixin, Base):
    __tablename__ = "users"

    # NULL only on a purged user's tombstone (see ``purged_at``).
    email: Mapped[str | None]
    full_name: Mapped[str | None]
    oauth_provider: Mapped[OAuthProvider | None] = mapped_column(oauth_provider)
    oauth_id: Mapped[str | None]
    tier: Mapped[UserTier] = mapped_column(user_tier, server_default=UserTier.FREE.value)
    email_verified: Mapped[bool] = mapped_column(server_default=text("false"))
    # An argon2id hash (database.identity); NULL until the user sets a password.
    # Deferred: loaded only by the code that checks it, so it never rides along.
    password_hash: Mapped[str | None] = mapped_column(deferred=True)
    password_changed_at: Mapped[dt.datetime | None]
    role: Mapped[UserRole] = mapped_column(user_role, server_default=UserRole.USER.value)
    # false: every key and session of the account is refused (an admin's act).
    is_active: Mapped[bool] = mapped_column(server_default=text("true"))
    can_upload: Mapped[bool] = mapped_column(server_default=text("true"))
    can_train: Mapped[bool] = mapped_column(server_default=text("true"))
    can_deploy: Mapped[bool] = mapped_column(server_default=text("true"))
    can_download: Mapped[bool] = mapped_column(server_default=text("true"))
    can_buy: Mapped[bool] = mapped_column(server_default=text("true"))
    is_deleted: Mapped[bool] = mapped_column(server_default=text("false"))
    deleted_at: Mapped[dt.datetime | None]
    # Set when database.lifecycle.purge erased the account's personal data and
    # removed its data: the row stays as a tombstone so the ledger still adds up.
    purged_at: Mapped[dt.datetime | None]

    credit_balance: Mapped[int] = counter_column()
    # The next billing alert thresholds (c16c00000001), kept by billing_alerts_sync
    # (sql/triggers/billing.sql) from the user's active alerts: the ledger's balance
    # UPDATE compares the new balance and the month's spend with them and checks the
    # alerts only when one is crossed. NULL: no such alert.
    # The highest armed balance_below threshold (fires when the balance goes below).
    alert_below: Mapped[int | None] = mapped_column(BigInteger, **_TRIGGER_KEPT)
    # The lowest fired balance_below threshold (re-arms when the balance is back at it).
    alert_rearm: Mapped[int | None] = mapped_column(BigInteger, **_TRIGGER_KEPT)
    # The lowest spend_above threshold not fired this month.
    alert_spend_above: Mapped[int | None] = mapped_column(BigInteger, **_TRIGGER_KEPT)
    # This month's charges net of refunds, while the user has a spend_above alert.
    alert_spend: Mapped[int | None] = mapped_column(BigInteger, **_TRIGGER_KEPT)
    # The end of the month alert_spend counts (UTC).
    alert_spend_until: Mapped[dt.datetime | None] = mapped_column(**_TRIGGER_KEPT)
    dataset_count: Mapped[int] = counter_column()
    workflow_count: Mapped[int] = counter_column()
    model_count: Mapped[int] = counter_column()
    storage_used_bytes: Mapped[int] = big_counter_column()

    datasets: Mapped[list[Dataset]] = relationship(
        back_populates="user", lazy="raise_on_sql", passive_deletes=True
    )
    workflows: Mapped[list[Workflow]] = relationship(
        back_populates="user", lazy="raise_on_sql", passive_deletes=True
    )
    jobs: Mapped[list[Job]] = relationship(
        back_populates="user", lazy="raise_on_sql", passive_deletes=True
    )
    models: Mapped[list[Model]] = relationship(
        back_populates="user", lazy="raise_on_sql", passive_deletes=True
    )
    credit_transactions: Mapped[list[CreditTransaction]] = relationship(
        back_populates="user", lazy="raise_on_sql", viewonly=True
    )
    experiments: Mapped[list[Experiment]] = relationship(
        back_populates="user", lazy="raise_on_sql", passive_deletes=True
    )
    tutorial_progress: Mapped[list[UserTutorialProgress]] = relationship(
        back_populates="user", lazy="raise_on_sql", passive_deletes=True
    )

    __table_args__ = (
        UniqueConstraint("email"),
        UniqueConstraint("oauth_provider", "oauth_id"),
        CheckConstraint("email = lower(btrim(email)) AND email LIKE '%_@_%'", name="email_format"),
        CheckConstraint("(oauth_provider IS NULL) = (oauth_id IS NULL)", name="oauth_pair"),
        CheckConstraint("is_deleted = (deleted_at IS NOT NULL)", name="soft_delete_consistent"),
        CheckConstraint("purged_at IS NULL OR is_deleted", name="purged_is_deleted"),
        CheckConstraint("email IS NOT NULL OR purged_at IS NOT NULL", name="email_unless_purged"),
        CheckConstraint("credit_balance >= 0", name="credit_balance_nonnegative"),
        CheckConstraint(
            "password_hash IS NULL OR password_hash LIKE '$argon2id$%'",
            name="password_hash_argon2id",
        ),
        CheckConstraint(
            "dataset_count >= 0 AND workflow_count >= 0 AND model_count >= 0"
            " AND storage_used_bytes >= 0",
            name="counters_nonnegative",
        ),
        # Purge looks for accounts deleted before the retention window.
        Index("ix_users_deleted_at", "deleted_at", postgresql_where=text("is_deleted")),
    )
