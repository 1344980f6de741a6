"""A permission another user holds on a registered model."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, CreatedAtMixin
from database.models.enums import ModelPermission, model_permission

if TYPE_CHECKING:
    from database.models.registered_model import RegisteredModel


class RegisteredModelPermission(CreatedAtMixin, Base):
    """``user_id`` may ``permission`` (read < download < deploy) the registered model.

    One row per (model, user): granting again replaces the permission. The owner
    holds everything already and cannot be granted (ML064,
    ``registered_model_permissions_not_owner``).
    """

    __tablename__ = "registered_model_permissions"

    registered_model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(
            "registered_models.id",
            ondelete="CASCADE",
            name="fk_registered_model_permissions_registered_models",
        ),
        primary_key=True,
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    permission: Mapped[ModelPermission] = mapped_column(model_permission)
    #: Who granted it (the owner, today); NULL once that user is deleted.
    granted_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )

    registered_model: Mapped[RegisteredModel] = relationship(
        back_populates="permissions", lazy="raise_on_sql"
    )

    __table_args__ = (
        # "What is shared with me": the grantee's key.
        Index("ix_registered_model_permissions_user_id", "user_id"),
        Index("ix_registered_model_permissions_granted_by", "granted_by"),
    )


__all__ = ["RegisteredModelPermission"]
