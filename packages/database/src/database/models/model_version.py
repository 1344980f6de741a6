"""A numbered version of a registered model: one trained model, with what it needs to be used."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    FetchedValue,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import ModelVersionStatus, model_version_status

if TYPE_CHECKING:
    from database.models.model import Model
    from database.models.model_version_metric import ModelVersionMetric
    from database.models.registered_model import RegisteredModel


class ModelVersion(IDMixin, TimestampMixin, Base):
    """Version ``version`` (1, 2, 3...) of a registered model.

    The database numbers it (``model_versions_number``, sql/triggers/registry.sql):
    whatever the client sends, ``version`` is the parent's counter plus one, taken in
    the UPDATE that locks the parent's row, so concurrent registrations get
    consecutive numbers and a number is never given twice. The same trigger sets
    ``user_id`` to the registered model's owner; the composite key to ``models``
    then says the trained model is the owner's too. ``version``,
    ``registered_model_id``, ``model_id`` and ``user_id`` never change (ML061).
    ``download_count`` is the number of granted downloads, kept by a statement-level
    trigger on ``model_downloads``; nothing else writes it (ML063).
    """

    __tablename__ = "model_versions"

    registered_model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE")
    )
    # Set by the numbering trigger to the registered model's owner.
    user_id: Mapped[uuid.UUID] = mapped_column(server_default=FetchedValue())
    version: Mapped[int] = mapped_column(server_default=FetchedValue())
    #: The trained model (its artifact); one version per trained model.
    model_id: Mapped[uuid.UUID]
    status: Mapped[ModelVersionStatus] = mapped_column(
        model_version_status, server_default=ModelVersionStatus.READY.value
    )
    description: Mapped[str | None]
    #: The metric the owner ranks this model by (one of its metrics' names).
    primary_metric: Mapped[str | None]
    #: The input schema: ``{"inputs": [{"name": ..., "type": ...}, ...]}``.
    signature: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    #: A few input rows, as records.
    input_example: Mapped[list[Any] | None] = mapped_column(JSONB(none_as_null=True))
    #: ``{"python": "3.12.1", "sklearn": "1.5.2", "numpy": ..., "pandas": ...}``.
    environment: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    download_count: Mapped[int] = mapped_column(
        BigInteger, server_default=text("0"), server_onupdate=FetchedValue()
    )

    registered_model: Mapped[RegisteredModel] = relationship(
        back_populates="versions", lazy="raise_on_sql"
    )
    model: Mapped[Model] = relationship(lazy="raise_on_sql", foreign_keys="ModelVersion.model_id")
    metrics: Mapped[list[ModelVersionMetric]] = relationship(
        back_populates="model_version", lazy="raise_on_sql", passive_deletes=True
    )

    __table_args__ = (
        # Also the index of the foreign key to registered_models.
        UniqueConstraint("registered_model_id", "version"),
        # Target of the aliases' key (an alias points at a version of its own model).
        UniqueConstraint("id", "registered_model_id"),
        # One version per trained model: model_id decides user_id (the key below), so
        # this is unique on model_id; it is also the index of that key.
        UniqueConstraint("model_id", "user_id"),
        ForeignKeyConstraint(
            ["model_id", "user_id"], ["models.id", "models.user_id"], ondelete="CASCADE"
        ),
        # The version search's default order (newest first), keyset on (created_at, id).
        Index("ix_model_versions_created_at_id", "created_at", "id"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("download_count >= 0", name="download_count_nonnegative"),
        CheckConstraint(
            "description IS NULL OR char_length(description) <= 5000", name="description_length"
        ),
        CheckConstraint(
            "primary_metric IS NULL OR char_length(primary_metric) BETWEEN 1 AND 200",
            name="primary_metric_length",
        ),
        CheckConstraint(
            "jsonb_typeof(signature) = 'object' AND char_length(signature::text) <= 100000",
            name="signature_shape",
        ),
        CheckConstraint(
            "input_example IS NULL OR (jsonb_typeof(input_example) = 'array'"
            " AND char_length(input_example::text) <= 100000)",
            name="input_example_shape",
        ),
        CheckConstraint(
            "jsonb_typeof(environment) = 'object' AND char_length(environment::text) <= 10000",
            name="environment_shape",
        ),
    )


__all__ = ["ModelVersion"]
