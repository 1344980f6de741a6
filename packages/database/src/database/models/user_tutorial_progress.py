"""How far a user has got in a tutorial."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin

if TYPE_CHECKING:
    from database.models.tutorial import Tutorial
    from database.models.user import User


class UserTutorialProgress(IDMixin, TimestampMixin, Base):
    __tablename__ = "user_tutorial_progress"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    tutorial_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tutorials.id", ondelete="CASCADE"))
    current_step: Mapped[int] = mapped_column(server_default=text("0"))
    # Indexes of the steps done, e.g. [0, 1, 2].
    completed_steps: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))
    is_completed: Mapped[bool] = mapped_column(server_default=text("false"))
    started_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    completed_at: Mapped[dt.datetime | None]

    user: Mapped[User] = relationship(back_populates="tutorial_progress", lazy="raise_on_sql")
    tutorial: Mapped[Tutorial] = relationship(back_populates="progress", lazy="raise_on_sql")

    __table_args__ = (
        UniqueConstraint("user_id", "tutorial_id"),
        CheckConstraint("current_step >= 0", name="current_step_nonnegative"),
        CheckConstraint("is_completed = (completed_at IS NOT NULL)", name="completion_consistent"),
        CheckConstraint("jsonb_typeof(completed_steps) = 'array'", name="completed_steps_is_array"),
        Index("ix_user_tutorial_progress_tutorial_id", "tutorial_id"),
    )
