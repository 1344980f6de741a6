"""An API key: how a client authenticates (``Authorization: Bearer <key>``).

Only a hash of the key is stored (SHA-256 of the whole key: keys are 256-bit random
tokens, so a slow password hash would add nothing but latency to every request) and
a short ``prefix`` a person can read in a list to tell keys apart. The plain key is
shown once, when it is created.

There is no ``updated_at``: the only changes a key sees are ``last_used_at`` and
``revoked_at``, which are themselves the times of those changes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, CreatedAtMixin, IDMixin

if TYPE_CHECKING:
    from database.models.user import User


class APIKey(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "api_keys"

    # CASCADE: a key means nothing without its account. A soft-deleted account's
    # keys stay (a restore brings them back) but stop authenticating.
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str]
    # The key's first characters (e.g. "aml_3kF9x2Qa"), readable in lists.
    prefix: Mapped[str]
    # Lower-case hex SHA-256 of the whole key: the lookup on every request.
    key_hash: Mapped[str]
    # What the key may do, e.g. {read, write, billing, keys}.
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    expires_at: Mapped[dt.datetime | None]
    # Moved at most about once a minute per key, so reads do not each write a row.
    last_used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    #: Quotas (database.metering.admit; NULL: none): requests per minute, and
    #: predicted rows per calendar month (UTC). Beyond them: 429 with Retry-After.
    rate_limit_per_minute: Mapped[int | None]
    monthly_row_quota: Mapped[int | None] = mapped_column(BigInteger)

    user: Mapped[User] = relationship(lazy="raise_on_sql", viewonly=True)

    __table_args__ = (
        UniqueConstraint("key_hash"),
        CheckConstraint("key_hash ~ '^[0-9a-f]{64}$'", name="key_hash_is_sha256_hex"),
        CheckConstraint("array_position(scopes, NULL) IS NULL", name="scopes_not_null"),
        CheckConstraint(
            "expires_at IS NULL OR expires_at > created_at", name="expires_after_created"
        ),
        CheckConstraint(
            "rate_limit_per_minute IS NULL OR rate_limit_per_minute > 0",
            name="rate_limit_positive",
        ),
        CheckConstraint(
            "monthly_row_quota IS NULL OR monthly_row_quota > 0", name="monthly_row_quota_positive"
        ),
        # A user's keys by date, and the cascade from users.
        Index("ix_api_keys_user_id_created_at", "user_id", "created_at"),
    )
