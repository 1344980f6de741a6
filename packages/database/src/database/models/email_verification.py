"""A pending proof that a user reads the mail of their address (database.identity).

The token travels in the mail; only its SHA-256 is stored. It verifies the address
it was sent to (``email``), once (``used_at``), before ``expires_at``.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import CheckConstraint, ForeignKey, Index, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin


class EmailVerification(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "email_verifications"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    email: Mapped[str]
    token_hash: Mapped[str] = mapped_column(deferred=True)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]

    __table_args__ = (
        UniqueConstraint("token_hash"),
        CheckConstraint("token_hash ~ '^[0-9a-f]{64}$'", name="token_hash_is_sha256_hex"),
        CheckConstraint("expires_at > created_at", name="expires_after_created"),
        Index("ix_email_verifications_user_id", "user_id"),
    )
