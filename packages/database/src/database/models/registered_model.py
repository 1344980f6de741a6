"""A user's named model in the registry: the container of numbered versions."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, Index, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin, counter_column
from database.models.enums import ModelVisibility, model_visibility

if TYPE_CHECKING:
    from database.models.model_alias import ModelAlias
    from database.models.model_version import ModelVersion
    from database.models.registered_model_permission import RegisteredModelPermission
    from database.models.user import User

#: Bounds of the text columns (the CHECKs say the same numbers).
MAX_NAME = 200
MAX_DESCRIPTION = 5000
MAX_MODEL_CARD = 100_000
MAX_LICENSE = 100
#: Tags: at most this many characters of JSON in all (a few dozen short tags).
MAX_TAGS_TEXT = 8000


class RegisteredModel(IDMixin, TimestampMixin, Base):
    """A name (unique per owner) that versions 1, 2, 3... are registered under.

    ``tags`` is a jsonb object of string to string (``ck_registered_models_tags_shape``),
    searched with ``tags @> '{"team": "x"}'`` through a GIN index (docs/schema.md says
    why not MLflow's tag rows). ``last_version_number`` is the counter the versions are
    numbered from (sql/triggers/registry.sql): it only goes up (ML060).
    """

    __tablename__ = "registered_models"

    #: The owner; never changes (ML066).
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str]
    description: Mapped[str | None]
    #: Markdown: what the model is for, how it was evaluated, its limits.
    model_card: Mapped[str | None]
    #: An SPDX identifier or a short licence name.
    license: Mapped[str | None]
    tags: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    visibility: Mapped[ModelVisibility] = mapped_column(
        model_visibility, server_default=ModelVisibility.PRIVATE.value
    )
    # The highest version number ever given (sql/triggers/registry.sql): the next
    # version gets one more, so a number is never reused after a delete.
    last_version_number: Mapped[int] = counter_column()

    user: Mapped[User] = relationship(lazy="raise_on_sql")
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="registered_model",
        lazy="raise_on_sql",
        passive_deletes=True,
        order_by="ModelVersion.version",
    )
    aliases: Mapped[list[ModelAlias]] = relationship(
        back_populates="registered_model", lazy="raise_on_sql", viewonly=True
    )
    permissions: Mapped[list[RegisteredModelPermission]] = relationship(
        back_populates="registered_model", lazy="raise_on_sql", passive_deletes=True
    )

    __table_args__ = (
        # Also the index of the owner's foreign key and of "my models by name".
        UniqueConstraint("user_id", "name"),
        CheckConstraint(f"char_length(name) BETWEEN 1 AND {MAX_NAME}", name="name_length"),
        CheckConstraint(
            f"description IS NULL OR char_length(description) <= {MAX_DESCRIPTION}",
            name="description_length",
        ),
        CheckConstraint(
            f"model_card IS NULL OR char_length(model_card) <= {MAX_MODEL_CARD}",
            name="model_card_length",
        ),
        CheckConstraint(
            f"license IS NULL OR char_length(license) BETWEEN 1 AND {MAX_LICENSE}",
            name="license_length",
        ),
        CheckConstraint(
            "jsonb_typeof(tags) = 'object'"
            " AND NOT jsonb_path_exists(tags, '$.* ? (@.type() != \"string\")')"
            f" AND char_length(tags::text) <= {MAX_TAGS_TEXT}",
            name="tags_shape",
        ),
        CheckConstraint("last_version_number >= 0", name="last_version_number_nonnegative"),
        Index("ix_registered_models_tags", "tags", postgresql_using="gin"),
        # The name search (database.registry.name_matches): words and word beginnings,
        # full text with the 'simple' configuration. pg_trgm is not in the embedded
        # server's build, so no trigram index (docs/schema.md).
        Index(
            "ix_registered_models_name_search",
            text("to_tsvector('simple'::regconfig, name)"),
            postgresql_using="gin",
        ),
        # Lists newest first, keyset on (created_at, id).
        Index("ix_registered_models_created_at_id", "created_at", "id"),
    )


__all__ = ["MAX_MODEL_CARD", "MAX_NAME", "MAX_TAGS_TEXT", "RegisteredModel"]
