"""One download of a model version, granted or refused: append-only."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address, IPv6Address

from sqlalchemy import CheckConstraint, ForeignKey, Index
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import ModelFormat, model_format

MAX_USER_AGENT = 512
MAX_REASON = 500


class ModelDownload(IDMixin, CreatedAtMixin, Base):
    """Who downloaded which version, when, in which format, from where, and whether it
    was granted (a refusal is recorded too, with its reason).

    Append-only for every client (``model_downloads_append_only``, ML062): UPDATE and
    DELETE are refused unless they come from a referential action (the version's
    removal takes its downloads with it; a deleted user's become anonymous), TRUNCATE
    always. ``model_versions.download_count`` counts the granted rows
    (``model_downloads_count``, one UPDATE per version and statement).
    """

    __tablename__ = "model_downloads"

    model_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    #: Who; NULL for an anonymous download of a public model.
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    format: Mapped[ModelFormat] = mapped_column(model_format)
    ip: Mapped[IPv4Address | IPv6Address | None] = mapped_column(INET)
    user_agent: Mapped[str | None]
    granted: Mapped[bool]
    #: Why it was refused (or a note on a grant).
    reason: Mapped[str | None]

    __table_args__ = (
        CheckConstraint(
            f"user_agent IS NULL OR char_length(user_agent) <= {MAX_USER_AGENT}",
            name="user_agent_length",
        ),
        CheckConstraint(
            f"reason IS NULL OR char_length(reason) BETWEEN 1 AND {MAX_REASON}",
            name="reason_length",
        ),
        Index("ix_model_downloads_model_version_id_created_at", "model_version_id", "created_at"),
        Index("ix_model_downloads_user_id_created_at", "user_id", "created_at"),
    )


__all__ = ["MAX_REASON", "MAX_USER_AGENT", "ModelDownload"]
