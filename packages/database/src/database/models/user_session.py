"""A login session: what ``POST /v1/auth/login`` hands out (database.identity).

The token is shown once; only its SHA-256 is stored (a 256-bit random token needs no
slow hash). A session is refused once ``revoked_at`` is set (logout, a password
change, an account deleted) or ``expires_at`` has passed; ``last_seen_at`` moves at
most once a minute. ``sql/triggers/identity.sql`` keeps the token, the owner and the
times of creation and revocation as written (ML103).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import CheckConstraint, ForeignKey, Index, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin


class UserSession(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "user_sessions"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Lower-case hex SHA-256 of the whole token: the lookup on every request.
    token_hash: Mapped[str] = mapped_column(deferred=True)
    user_agent: Mapped[str | None]
    ip: Mapped[str | None] = mapped_column(INET)
    last_seen_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]

    __table_args__ = (
        UniqueConstraint("token_hash"),
        CheckConstraint("token_hash ~ '^[0-9a-f]{64}$'", name="token_hash_is_sha256_hex"),
        CheckConstraint("expires_at > created_at", name="expires_after_created"),
        CheckConstraint(
            "user_agent IS NULL OR char_length(user_agent) <= 500", name="user_agent_length"
        ),
        # A user's sessions by date (the list, the revocations), and the cascade.
        Index("ix_user_sessions_user_id_created_at", "user_id", "created_at"),
    )
