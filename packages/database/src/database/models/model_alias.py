"""A named pointer (``champion``, ``challenger``...) at one version of a registered model."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, ForeignKeyConstraint, Index, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base

if TYPE_CHECKING:
    from database.models.model_version import ModelVersion
    from database.models.registered_model import RegisteredModel

#: An alias: a lowercase word, never a pure number (it would read as a version).
ALIAS_PATTERN = "^[a-z][a-z0-9_-]{0,62}$"


class ModelAlias(Base):
    """Keyed ``(registered_model_id, alias)``: one version per alias per model; moving
    an alias is an UPDATE of its one row. The composite key to
    ``model_versions (registered_model_id, id)`` makes it point at a version of the
    same registered model; deleting that version removes the alias."""

    __tablename__ = "model_aliases"

    registered_model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(primary_key=True)
    model_version_id: Mapped[uuid.UUID]
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())

    registered_model: Mapped[RegisteredModel] = relationship(
        back_populates="aliases", lazy="raise_on_sql", viewonly=True
    )
    model_version: Mapped[ModelVersion] = relationship(
        lazy="raise_on_sql",
        foreign_keys="ModelAlias.model_version_id",
        primaryjoin="ModelAlias.model_version_id == ModelVersion.id",
        viewonly=True,
    )

    __table_args__ = (
        ForeignKeyConstraint(
            ["model_version_id", "registered_model_id"],
            ["model_versions.id", "model_versions.registered_model_id"],
            ondelete="CASCADE",
            name="fk_model_aliases_model_version_id_model_versions",
        ),
        CheckConstraint(f"alias ~ '{ALIAS_PATTERN}'", name="alias_name"),
        Index(
            "ix_model_aliases_model_version_id_registered_model_id",
            "model_version_id",
            "registered_model_id",
        ),
    )


__all__ = ["ALIAS_PATTERN", "ModelAlias"]
