"""Interactive learning content."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import CheckConstraint, Index, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import TutorialDifficulty, tutorial_difficulty

if TYPE_CHECKING:
    from database.models.user_tutorial_progress import UserTutorialProgress


class Tutorial(IDMixin, TimestampMixin, Base):
    __tablename__ = "tutorials"

    slug: Mapped[str]
    title: Mapped[str]
    description: Mapped[str | None]
    difficulty: Mapped[TutorialDifficulty] = mapped_column(
        tutorial_difficulty, server_default=TutorialDifficulty.BEGINNER.value
    )
    # [{"title", "body", "action"}]: one entry per step.
    steps: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))
    estimated_minutes: Mapped[int | None]
    sort_order: Mapped[int] = mapped_column(server_default=text("0"))
    is_published: Mapped[bool] = mapped_column(server_default=text("true"))

    progress: Mapped[list[UserTutorialProgress]] = relationship(
        back_populates="tutorial", lazy="raise_on_sql", passive_deletes=True
    )

    __table_args__ = (
        UniqueConstraint("slug"),
        CheckConstraint("jsonb_typeof(steps) = 'array'", name="steps_is_array"),
        CheckConstraint(
            "estimated_minutes IS NULL OR estimated_minutes > 0", name="estimated_minutes_positive"
        ),
        Index("ix_tutorials_sort_order", "sort_order"),
    )
